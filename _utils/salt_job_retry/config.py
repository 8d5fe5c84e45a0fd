"""
The ``job_retry:`` master config block: defaults, types and validation.

This is the one place the defaults live; the README's config reference and
``pillar-example/`` are checked against ``OPTIONS`` by the unit tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit()


def _globs(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    kind: str  # human-readable expected type, used in error messages
    check: Callable[[Any], bool]
    doc: str


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


OPTIONS: tuple[Option, ...] = (
    Option(
        "enabled",
        False,
        "boolean",
        lambda v: isinstance(v, bool),
        "Master switch. Off: nothing is recorded or replayed and runners say so.",
    ),
    Option(
        "redis_url",
        "redis://127.0.0.1:6379/0",
        "redis://, rediss:// or unix:// URL",
        lambda v: isinstance(v, str) and urlsplit(v).scheme in REDIS_SCHEMES,
        "Where the state lives. A password may be given in the URL.",
    ),
    Option(
        "sentinels",
        [],
        "list of host:port strings",
        lambda v: _globs(v) and all(_host_port(n) for n in v),
        "Redis Sentinel addresses; when set, the master of `sentinel_service` is used (`redis_url` gives db and TLS).",
    ),
    Option(
        "sentinel_service",
        "mymaster",
        "string",
        lambda v: isinstance(v, str) and bool(v),
        "The Sentinel service (master group) name.",
    ),
    Option("sentinel_password", None, "string", _optional_str, "Password of the Sentinels themselves, if any."),
    Option(
        "cluster_nodes",
        [],
        "list of host:port strings",
        lambda v: _globs(v) and all(_host_port(n) for n in v),
        "Redis Cluster startup nodes; when set, Cluster mode is used (`redis_url` gives TLS only).",
    ),
    Option("username", None, "string", _optional_str, "Redis ACL user; overrides one in `redis_url`."),
    Option("password", None, "string", _optional_str, "Redis password; overrides one in `redis_url`."),
    Option("ssl_ca_certs", None, "path string", _optional_str, "CA bundle to verify a `rediss://` server."),
    Option("ssl_certfile", None, "path string", _optional_str, "Client certificate for `rediss://` (mutual TLS)."),
    Option("ssl_keyfile", None, "path string", _optional_str, "Key of `ssl_certfile`."),
    Option(
        "key_prefix",
        "job_retry",
        "string of A-Z a-z 0-9 _ . : - (max 64)",
        lambda v: isinstance(v, str) and bool(KEY_PREFIX_RE.match(v)),
        "Prefix of every Redis key, so several masters or tests can share a Redis.",
    ),
    Option("socket_timeout", 5.0, "number > 0", _positive, "Seconds to wait for Redis before a call fails."),
    Option(
        "timeout",
        30,
        "number > 0",
        _positive,
        "Seconds after publish before a silent minion counts as missing for the sweep.",
    ),
    Option(
        "max_attempts",
        3,
        "integer >= 1",
        lambda v: _is_int(v) and v >= 1,
        "Replays per (jid, minion) before it is marked exhausted.",
    ),
    Option(
        "ttl",
        604800,
        "integer >= 60",
        lambda v: _is_int(v) and v >= 60,
        "Seconds every key lives after its last write (default 7 days).",
    ),
    Option(
        "claim_lease",
        10,
        "number > 0",
        _positive,
        "Seconds an engine holds a minion's replay sequence; an engine silent for 3 leases is replaced.",
    ),
    Option(
        "exclude_functions",
        list(DEFAULT_EXCLUDE_FUNCTIONS),
        "list of glob strings",
        _globs,
        "Functions never recorded for replay. Setting it replaces the default list.",
    ),
    Option(
        "include_functions",
        [],
        "list of glob strings",
        _globs,
        "If non-empty, only these functions are recorded (exclusions still apply).",
    ),
    Option("interval", 10, "number > 0", _positive, "Seconds between the engine's sweeps."),
    Option(
        "max_replays_per_second",
        50,
        "number > 0",
        _positive,
        "Fleet-wide replay rate (all engines on this Redis); the rest wait their turn.",
    ),
    Option(
        "replay_jid",
        "original",
        "'original' or 'new'",
        lambda v: v in ("original", "new"),
        "Replay under the original jid (minions drop duplicates) or a fresh, linked one.",
    ),
    Option(
        "replay_wait",
        300,
        "number > 0",
        _positive,
        "Seconds a minion's sequence waits for a replay's return before the next job goes out.",
    ),
    Option(
        "supersede_functions",
        ["state.highstate", "state.apply"],
        "list of glob strings",
        _globs,
        "Jobs whose newer identical twin is owed too are not replayed (`superseded`). "
        "`fun` matches calls without arguments, `fun(*)` calls with any arguments. [] turns it off.",
    ),
    Option(
        "max_refusals",
        30,
        "integer >= 1",
        lambda v: _is_int(v) and v >= 1,
        "Times a replay refused by a running state run is sent again before it is exhausted.",
    ),
    Option(
        "probe_timeout",
        5,
        "number > 0",
        _positive,
        "Seconds the engine waits for a minion to report its pid (when its start event has none).",
    ),
    Option(
        "replay_interrupted",
        False,
        "boolean",
        lambda v: isinstance(v, bool),
        "Replay a job a minion acknowledged but restarted before returning.",
    ),
    Option(
        "replay_on_presence",
        False,
        "boolean",
        lambda v: isinstance(v, bool),
        "Also replay when `salt/presence/change` lists a minion as new (needs presence_events).",
    ),
    Option(
        "retry_ping_timeout",
        5,
        "number > 0",
        _positive,
        "Seconds `retry` waits for saltutil.running answers (connected, and still running the job?).",
    ),
    Option(
        "max_job_bytes",
        1048576,
        "integer >= 1024",
        lambda v: _is_int(v) and v >= 1024,
        "Jobs whose packed arguments are larger are not recorded (status says why).",
    ),
    Option(
        "job_cache",
        "local_cache",
        "returner name other than job_retry",
        lambda v: isinstance(v, str) and bool(v) and v != "job_retry",
        "The job cache that keeps Salt's job history when `master_job_cache: job_retry` stands in front of it.",
    ),
    Option(
        "spool_dir",
        None,
        "path string",
        _optional_str,
        "Where events wait while Redis is unreachable (default: <cachedir>/job_retry).",
    ),
    Option(
        "spool_max_bytes",
        67108864,
        "integer >= 0",
        lambda v: _is_int(v) and v >= 0,
        "Size cap of the spool; events past it are dropped with an error.",
    ),
)
OPTION_NAMES = frozenset(o.name for o in OPTIONS)
_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    enabled: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    sentinels: tuple[str, ...] = ()
    sentinel_service: str = "mymaster"
    sentinel_password: str | None = None
    cluster_nodes: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    key_prefix: str = "job_retry"
    socket_timeout: float = 5.0
    timeout: float = 30
    max_attempts: int = 3
    ttl: int = 604800
    claim_lease: float = 10
    exclude_functions: tuple[str, ...] = DEFAULT_EXCLUDE_FUNCTIONS
    include_functions: tuple[str, ...] = ()
    interval: float = 10
    max_replays_per_second: float = 50
    replay_jid: str = "original"
    replay_wait: float = 300
    supersede_functions: tuple[str, ...] = ("state.highstate", "state.apply")
    max_refusals: int = 30
    probe_timeout: float = 5
    replay_interrupted: bool = False
    replay_on_presence: bool = False
    retry_ping_timeout: float = 5
    max_job_bytes: int = 1048576
    job_cache: str = "local_cache"
    spool_dir: str | None = None
    spool_max_bytes: int = 67108864
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def redis_display(self) -> str:
        """Where Redis is, with any password masked, safe for logs and output."""
        if self.cluster_nodes:
            return f"cluster {','.join(self.cluster_nodes)}"
        if self.sentinels:
            return f"sentinel service {self.sentinel_service} via {','.join(self.sentinels)}"
        return redact_url(self.redis_url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


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
        option = _BY_NAME.get(name)
        if option is None:
            continue
        listy = isinstance(option.default, list)
        if listy and isinstance(value, str):
            value = [value]
        if not option.check(value):
            raise ConfigError(f"job_retry:{name}: expected {option.kind}, got {value!r}")
        values[name] = tuple(value) if listy else value
    unknown = sorted(str(k) for k in raw if k not in OPTION_NAMES)
    warnings = tuple(f"job_retry:{k} is not a known option and is ignored" for k in unknown)
    return Config(**values, warnings=warnings)


def from_opts(opts: dict, override: dict | None = None) -> Config:
    """Config from Salt opts; ``override`` (e.g. engine kwargs) wins over the block."""
    raw = opts.get("job_retry")
    if override:
        raw = {**(raw or {}), **override}
    return load(raw)
