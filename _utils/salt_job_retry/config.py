"""
The ``job_retry:`` master config block: defaults, types and validation.

This is the one place the defaults live; the README's config reference and
``pillar-example/`` are checked against ``OPTIONS`` by the unit tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Salt's own job-control and read-only calls. Replaying them is noise at best:
# the synchronous CLI publishes saltutil.find_job to every silent minion.
DEFAULT_EXCLUDE_FUNCTIONS = (
    "saltutil.find_job",
    "saltutil.running",
    "saltutil.is_running",
    "saltutil.kill_job",
    "saltutil.term_job",
    "saltutil.signal_job",
    "saltutil.sync_*",
    "saltutil.refresh_*",
    "saltutil.clear_*",
    "test.ping",
    "test.version",
    "test.versions*",
    "test.echo",
    "sys.*",
    "grains.get",
    "grains.item",
    "grains.items",
    "grains.ls",
    "pillar.get",
    "pillar.item",
    "pillar.items",
    "pillar.ls",
    "config.get",
    "config.option",
    "state.running",
    "state.show_*",
    "mine.get",
)

KEY_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ConfigError(ValueError):
    """A ``job_retry`` option has a value of the wrong type or range."""


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    kind: str  # human-readable expected type, used in error messages
    doc: str


OPTIONS: tuple[Option, ...] = (
    Option("enabled", False, "boolean", "Master switch. Off: nothing is recorded or replayed and runners say so."),
    Option(
        "redis_url",
        "redis://127.0.0.1:6379/0",
        "redis://, rediss:// or unix:// URL",
        "Where the state lives. A password may be given in the URL.",
    ),
    Option("password", None, "string", "Redis password; overrides one in `redis_url`."),
    Option(
        "key_prefix",
        "job_retry",
        "string of A-Z a-z 0-9 _ . : - (max 64)",
        "Prefix of every Redis key, so several masters or tests can share a Redis.",
    ),
    Option("socket_timeout", 5.0, "number > 0", "Seconds to wait for Redis before a call fails."),
    Option(
        "timeout", 30, "number > 0", "Seconds after publish before a silent minion counts as missing for the sweep."
    ),
    Option("max_attempts", 3, "integer >= 1", "Replays per (jid, minion) before it is marked exhausted."),
    Option("ttl", 604800, "integer >= 60", "Seconds every key lives after its last write (default 7 days)."),
    Option("claim_lease", 10, "number > 0", "Seconds a replay claim blocks another replay of the same (jid, minion)."),
    Option(
        "exclude_functions",
        list(DEFAULT_EXCLUDE_FUNCTIONS),
        "list of glob strings",
        "Functions never recorded for replay. Setting it replaces the default list.",
    ),
    Option(
        "include_functions",
        [],
        "list of glob strings",
        "If non-empty, only these functions are recorded (exclusions still apply).",
    ),
    Option("interval", 10, "number > 0", "Seconds between the engine's sweeps."),
    Option(
        "retry_ping_timeout",
        5,
        "number > 0",
        "Seconds `retry` waits for test.ping to learn which minions are connected.",
    ),
    Option("backlog_max", 10000, "integer >= 0", "Events the returner keeps in memory while Redis is unreachable."),
)
OPTION_NAMES = frozenset(o.name for o in OPTIONS)


@dataclass(frozen=True)
class Config:
    enabled: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    password: str | None = None
    key_prefix: str = "job_retry"
    socket_timeout: float = 5.0
    timeout: float = 30
    max_attempts: int = 3
    ttl: int = 604800
    claim_lease: float = 10
    exclude_functions: tuple[str, ...] = DEFAULT_EXCLUDE_FUNCTIONS
    include_functions: tuple[str, ...] = ()
    interval: float = 10
    retry_ping_timeout: float = 5
    backlog_max: int = 10000
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def redis_display(self) -> str:
        """The Redis URL with any password masked, safe for logs and output."""
        return redact_url(self.redis_url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(name: str, ok: bool, value: Any) -> None:
    if not ok:
        kind = next(o.kind for o in OPTIONS if o.name == name)
        raise ConfigError(f"job_retry:{name}: expected {kind}, got {value!r}")


def _globs(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _check(name, isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), value)
    return tuple(value)


def _check_url(url: Any) -> None:
    _check("redis_url", isinstance(url, str) and urlsplit(url).scheme in REDIS_SCHEMES, url)


def load(raw: Any) -> Config:
    """
    Validate the ``job_retry`` block and return a Config.

    Raises ConfigError naming the key and the expected type. Unknown keys are
    not fatal (they are listed in ``Config.warnings``) so that a newer config
    does not break an older module.
    """
    if raw is None:
        return Config()
    if not isinstance(raw, dict):
        raise ConfigError(f"job_retry must be a mapping of options, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in OPTION_NAMES:
            continue
        if name == "enabled":
            _check(name, isinstance(value, bool), value)
        elif name == "redis_url":
            _check_url(value)
        elif name == "password":
            _check(name, value is None or isinstance(value, str), value)
        elif name == "key_prefix":
            _check(name, isinstance(value, str) and bool(KEY_PREFIX_RE.match(value)), value)
        elif name in ("max_attempts",):
            _check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 1, value)
        elif name == "ttl":
            _check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 60, value)
        elif name == "backlog_max":
            _check(name, isinstance(value, int) and not isinstance(value, bool) and value >= 0, value)
        elif name in ("exclude_functions", "include_functions"):
            value = _globs(name, value)
        else:  # the positive numbers
            _check(name, _is_number(value) and value > 0, value)
        values[name] = value
    unknown = sorted(str(k) for k in raw if k not in OPTION_NAMES)
    warnings = tuple(f"job_retry:{k} is not a known option and is ignored" for k in unknown)
    return Config(**values, warnings=warnings)


def from_opts(opts: dict, override: dict | None = None) -> Config:
    """Config from Salt opts; ``override`` (e.g. engine kwargs) wins over the block."""
    raw = opts.get("job_retry")
    if override:
        raw = {**(raw or {}), **override}
    return load(raw)
