"""
A real redis-server, salt-master and salt-minions on 127.0.0.1 for end-to-end tests of job_retry.

Follows the measured recipe in salt-e2e-notes.md (pitfalls P1-P18 are referenced below)::

    with Lab() as lab:                       # redis + master (+ engine) + minions alpha, beta
        lab.kill_minion("beta")              # SIGKILL of its process group: instant "down"
        jid = lab.publish_trace("*", "t1")
        lab.start_minion("beta")
        assert lab.wait_trace("beta", "t1") == 1

Every daemon runs in its own session/process group; ``stop()`` (also run from ``atexit`` and on
SIGTERM) kills every group it started. Set ``JRE_KEEP=1`` to keep the temp root for debugging.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis
import yaml

REPO = Path(__file__).resolve().parent.parent
STATES_DIR = Path(__file__).resolve().parent / "integration" / "states"  # copied into file_roots


def salt_version() -> tuple[int, ...]:
    """The Salt release the tests run against (the one in this venv), e.g. (3008, 3)."""
    import salt.version

    return tuple(salt.version.__saltstack_version__.info[:2])


ENGINE_TITLE = "Engine(salt.loaded.ext.engines.job_retry)"
READY_LINE = "Minion is ready to receive requests!"
LOADER_DIRS = {
    "runner_dirs": "_runners",
    "returner_dirs": "_returners",
    "engines_dirs": "_engines",
    "utils_dirs": "_utils",
}
# Longest IPC socket name salt creates in a sock_dir: minion_event_<10 hex>_pull.ipc (P1).
LONGEST_SOCK_NAME = "minion_event_0123456789_pull.ipc"
MAX_SOCK_PATH = 100
PORT_RANGE = (15000, 32000)  # below the kernel's ephemeral range

_LIVE: set[Lab] = set()
_USED_PORTS: set[int] = set()


def live_pgids() -> set[int]:
    """Process group ids of every non-zombie process on the box."""
    groups = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp ...
        if fields[0] not in ("Z", "X"):
            groups.add(int(fields[2]))
    return groups


def json_docs(text: str) -> list[object]:
    """Every JSON document in text: ``salt --out=json`` prints one per minion (P3)."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)


def wait_for(check: Callable[[], object], timeout: float = 30, every: float = 0.5) -> object:
    """Poll `check` until it returns something truthy or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return check()


def runner_status(lab: Lab, jid: str) -> dict:
    """``salt-run job_retry.status <jid>`` on the lab's (first) master; it must succeed."""
    code, out = lab.run("job_retry.status", jid)
    assert code == 0, out
    return out


def _tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"--- {path}: {exc}"
    return f"--- tail of {path} ---\n" + "\n".join(content[-lines:])


def _listening(port: int, host: str | None = None) -> bool:
    """True if something listens on TCP port (/proc/net/tcp state 0A), on `host` (an IPv4 address) if given."""
    want = f":{port:04X}"
    if host is not None:  # /proc/net/tcp shows the address as little-endian hex: 127.0.0.2 -> 0200007F
        want = "".join(f"{int(octet):02X}" for octet in reversed(host.split("."))) + want
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1].endswith(want) and cols[3] == "0A":
                return True
    return False


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_ports(count: int, hosts: Iterable[str] = ("127.0.0.1",)) -> int:
    """First of `count` consecutive ports free on every one of `hosts` (P18)."""
    hosts = tuple(hosts)
    for _ in range(500):
        first = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        ports = range(first, first + count)
        if all(p not in _USED_PORTS and all(_bindable(p, h) for h in hosts) for p in ports):
            _USED_PORTS.update(ports)
            return first
    raise AssertionError(f"no {count} free consecutive ports in {PORT_RANGE}")


def _kill_groups(pgids: Iterable[int], grace: float = 10.0) -> None:
    """SIGTERM every group, wait up to `grace` s for all, then SIGKILL what is left."""
    pending = set(pgids)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pgid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            pending &= live_pgids()
            if pending:
                time.sleep(0.05)
        if not pending:
            return
    raise AssertionError(f"process groups {sorted(pending)} survived SIGKILL")


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"  # Debian's libfaketime


def clock_off(offset: str) -> dict:
    """Environment that runs a daemon with its clock shifted (libfaketime), e.g. "+1h"."""
    # monotonic shifted too: with it left alone, Python's time.sleep (clock_nanosleep) fails with EINVAL
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "0"}


class Lab:
    """One redis-server, one or more salt-masters and some salt-minions under a short temp root.

    Topologies (salt-e2e-notes.md section 5):

    - ``masters=("master",)`` (the default): one master on 127.0.0.1, config dir ``<root>/master``,
      id ``e2e-master``, exactly as before.
    - ``masters=("m1", "m2", ...)``: master i binds 127.0.0.(i+2) with the same publish/ret ports,
      config dir ``<root>/<name>``, id ``e2e-<name>``, one shared key pair (written into every
      pki_dir before any master starts, so they can start in any order), the same redis,
      key_prefix, event_return and engine. Methods taking ``master=`` / ``name=`` default to the
      first master (``published_count`` sums over all of them).
    - ``minion_mode``: ``"single"`` (``master:`` = the first master), ``"hot"`` (``master:`` = every
      master; ready once per running master) or ``"failover"`` (``master_type: failover``,
      ``master_alive_interval: 10``, ``retry_dns: 0``; the minion key is pre-seeded and accepted on
      every master). A str for every minion or a dict ``{minion: mode}`` (missing ones: single).
    - ``minion_extra``: extra minion config. Keys naming a configured minion hold that minion's
      extras; every other key applies to all minions, e.g.
      ``{"start_event_grains": ["pid"], "beta": {"startup_states": "highstate"}}``.

    The state tree (tests/integration/states) is copied into file_roots: ``jr.touch`` (see
    ``publish_state``) and a ``top.sls`` whose highstate applies ``jr.hs`` (see ``publish_highstate``).
    """

    MINION_MODES = ("single", "hot", "failover")

    def __init__(
        self,
        install: str = "dirs",
        job_retry: dict | None = None,
        minions: Iterable[str] = ("alpha", "beta"),
        master_extra: dict | None = None,
        bin_dir: str = os.path.dirname(sys.executable),
        env: dict | None = None,
        wait_for_engine: bool = True,
        redis_aof: bool = False,
        masters: Iterable[str] = ("master",),
        minion_mode: str | dict[str, str] = "single",
        minion_extra: dict | None = None,
        master_env: dict[str, dict] | None = None,
    ) -> None:
        if install not in ("dirs", "sync", "pip"):
            raise ValueError(f"install must be dirs, sync or pip, not {install!r}")
        self.install = install
        self.job_retry_conf = dict(job_retry or {})
        self.minions = tuple(minions)
        self.masters = tuple(masters)
        reserved = {"redis", "srv", "trace", *self.minions}
        if not self.masters or len(set(self.masters)) != len(self.masters) or reserved & set(self.masters):
            raise ValueError(f"masters must be unique, non-empty and not one of {sorted(reserved)}: {self.masters}")
        if not all(re.fullmatch(r"[A-Za-z0-9_-]{1,12}", m) for m in self.masters):
            raise ValueError(f"master names must be short [A-Za-z0-9_-] dir names (P1): {self.masters}")
        if len(self.masters) > 250:
            raise ValueError("at most 250 masters (127.0.0.2-127.0.0.251)")
        modes = minion_mode if isinstance(minion_mode, dict) else dict.fromkeys(self.minions, minion_mode)
        self.minion_modes = {name: modes.get(name, "single") for name in self.minions}
        bad = {k: v for k, v in modes.items() if k not in self.minions or v not in self.MINION_MODES}
        if bad:
            raise ValueError(f"minion_mode must map configured minions to one of {self.MINION_MODES}: {bad}")
        self.minion_extra = dict(minion_extra or {})
        self.master_extra = dict(master_extra or {})
        self.bin_dir = bin_dir
        self.env = {**os.environ, **(env or {})}
        self.master_env = {name: dict(extra) for name, extra in (master_env or {}).items()}  # e.g. libfaketime
        self.wait_for_engine = wait_for_engine
        self.redis_aof = redis_aof  # appendonly yes, fsync always: survives a restart
        self.user = getpass.getuser()
        self.root = ""
        self.redis_port = self.publish_port = self.ret_port = 0
        self.pgids: list[int] = []  # every process group ever started, for leak checks
        self._procs: dict[str, subprocess.Popen] = {}  # "redis", "master:<name>", "minion:<id>"
        self._ready_offset: dict[str, int] = {}  # minion -> log size when it was last started
        self._start_offset: dict[str, int] = {}  # minion -> log size at its last start_minion()
        self._first_master: dict[str, str | None] = {}  # failover minion -> master it picked at start

    # ----------------------------------------------------------------- layout and configs
    def path(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    def _master(self, name: str | None) -> str:
        """The master's name; None means the first master."""
        if name is None:
            return self.masters[0]
        if name not in self.masters:
            raise ValueError(f"unknown master {name!r}; configured: {self.masters}")
        return name

    def master_path(self, name: str | None = None, *parts: str) -> Path:
        """``<root>/<master name>/<parts>``, e.g. ``lab.master_path("m2", "pki", "master.pub")``."""
        return self.path(self._master(name), *parts)

    @property
    def master_dir(self) -> str:
        """The first master's config dir (``salt -c``)."""
        return str(self.master_path())

    @property
    def extmods(self) -> Path:
        """The first master's extension_modules dir (where sync_all puts modules)."""
        return self.master_path(None, "extmods")

    def master_ip(self, name: str | None = None) -> str:
        """127.0.0.1 with one master; 127.0.0.(i+2) for master i of several."""
        name = self._master(name)
        return "127.0.0.1" if len(self.masters) == 1 else f"127.0.0.{self.masters.index(name) + 2}"

    def master_id(self, name: str | None = None) -> str:
        name = self._master(name)
        return "e2e-master" if name == "master" else f"e2e-{name}"

    def _ensure_prepared(self) -> None:
        if not self.root:
            self._prepare()

    def _prepare(self) -> None:
        self.root = tempfile.mkdtemp(prefix="jre-", dir="/tmp")  # short root (P1)
        self.redis_port = _free_ports(1)
        self.publish_port = _free_ports(2, {"127.0.0.1", *(self.master_ip(m) for m in self.masters)})
        self.ret_port = self.publish_port + 1
        for sub in (*self.masters, "redis", "srv", "trace", *self.minions):
            self.path(sub).mkdir()
        for sock_dir in (self.path(sub, "sock") for sub in (*self.masters, *self.minions)):
            sock = f"{sock_dir}/{LONGEST_SOCK_NAME}"
            assert len(sock) <= MAX_SOCK_PATH, f"unix socket path too long ({len(sock)}): {sock}"
        if self.install == "sync":
            for sub in LOADER_DIRS.values():
                if (REPO / sub).is_dir():
                    shutil.copytree(REPO / sub, self.path("srv", sub), ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(STATES_DIR, self.path("srv"), dirs_exist_ok=True)
        for name in self.masters:
            self._write(name, "master", self.master_config(name))
        if len(self.masters) > 1:
            # Multi-master needs one key pair (notes section 5). Each master finds master.pem/pub in
            # its pki_dir at first start and (3008) renames them to <id>.pem/pub plus symlinks.
            first = self.master_path(None, "pki")
            self._gen_keys("master", first)
            for name in self.masters[1:]:
                self.master_path(name, "pki").mkdir(mode=0o700)
                for key in ("master.pem", "master.pub"):
                    shutil.copy2(first / key, self.master_path(name, "pki", key))
        for name in self.minions:
            self._write(name, "minion", self.minion_config(name))
            if self.minion_modes[name] == "failover":
                self.preaccept_minion(name)

    @staticmethod
    def _gen_keys(keyname: str, keydir: Path) -> None:
        """Write ``<keyname>.pem`` / ``.pub`` the way ``salt.crypt.gen_keys`` does (RSA 2048, PEM).

        Not ``salt-key --gen-keys``: on 3008.3 it also writes a second, different pair named after
        the config's ``id`` (which a master then prefers over master.pem) and crashes on the fingerprint.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        priv = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for suffix, data, mode in ((".pem", priv, 0o400), (".pub", pub, 0o644)):
            path = keydir / f"{keyname}{suffix}"
            path.write_bytes(data)
            path.chmod(mode)

    def preaccept_minion(self, name: str) -> None:
        """Generate the minion's key pair now (unless it has one) and accept it on every master.

        A failover minion only talks to one master at a time; pre-accepting lets every master
        target it (and count it in ``minions``) from the start (notes section 5).
        """
        self._ensure_prepared()
        pki = self.path(name, "pki")
        if not (pki / "minion.pub").exists():
            self._gen_keys("minion", pki)
        for master in self.masters:
            accepted = self.master_path(master, "pki", "minions")
            accepted.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pki / "minion.pub", accepted / name)

    def _write(self, sub: str, filename: str, config: dict) -> None:
        self.path(sub, filename).write_text(yaml.safe_dump(config, default_flow_style=False))

    def master_config(self, name: str | None = None) -> dict:
        name = self._master(name)
        m = str(self.master_path(name))
        job_retry = {
            "enabled": True,
            "redis_url": f"redis://127.0.0.1:{self.redis_port}/0",
            "key_prefix": "jr",
            "timeout": 5,
            "max_attempts": 3,
            "interval": 2,
            "claim_lease": 2,
            **self.job_retry_conf,
        }
        config = {
            "id": self.master_id(name),
            "root_dir": m,
            "pki_dir": f"{m}/pki",
            "cachedir": f"{m}/cache",
            "sock_dir": f"{m}/sock",
            "extension_modules": f"{m}/extmods",  # P2
            "pidfile": f"{m}/master.pid",
            "log_file": f"{m}/master.log",
            "key_logfile": f"{m}/key.log",
            "log_level_logfile": "info",
            "interface": self.master_ip(name),
            "publish_port": self.publish_port,
            "ret_port": self.ret_port,
            "user": self.user,
            "auto_accept": True,
            "fileserver_backend": ["roots"],
            "file_roots": {"base": [str(self.path("srv"))]},
            "gather_job_timeout": 3,  # P4/P17
            "job_retry": job_retry,
            "master_job_cache": "job_retry",  # jobs and returns: from the master's own job cache
            "event_return": "job_retry",  # 3008 start acks
            "engines": [{"job_retry": {}}],
        }
        if self.install == "dirs":
            config.update({key: [str(REPO / sub)] for key, sub in LOADER_DIRS.items() if (REPO / sub).is_dir()})
        config.update(self.master_extra)
        return config

    def minion_config(self, name: str) -> dict:
        d = str(self.path(name))
        mode = self.minion_modes[name]
        config = {
            "id": name,
            "master": self.master_ip() if mode == "single" else [self.master_ip(m) for m in self.masters],
            "master_port": self.ret_port,
            "publish_port": self.publish_port,
            "root_dir": d,
            "pki_dir": f"{d}/pki",
            "cachedir": f"{d}/cache",
            "sock_dir": f"{d}/sock",
            "pidfile": f"{d}/minion.pid",
            "log_file": f"{d}/minion.log",
            "log_level_logfile": "info",
            "user": self.user,
            "acceptance_wait_time": 1,
            "random_reauth_delay": 0,
            "recon_default": 200,  # P11
            "recon_max": 1000,
            "recon_randomize": False,
            "jr_trace_dir": str(self.path("trace")),  # read by the jr.* states
        }
        if mode != "single":
            # After one of several masters restarts, a minion's first request to it can sit out the
            # whole request_channel_timeout (default 60 s; seen once in ~8 restarts): keep it short.
            config["request_channel_timeout"] = 15
        if mode == "failover":
            config.update({"master_type": "failover", "master_alive_interval": 10, "retry_dns": 0})
        config.update({k: v for k, v in self.minion_extra.items() if k not in self.minions})
        config.update(self.minion_extra.get(name, {}))
        return config

    def _minion_masters(self, name: str) -> list[str]:
        """The masters (by name) a minion's config lists, in order."""
        listed = self.minion_config(name)["master"]
        ips = listed if isinstance(listed, list) else [listed]
        by_ip = {self.master_ip(m): m for m in self.masters}
        return [by_ip[ip] for ip in ips if ip in by_ip]

    def _is_failover(self, name: str) -> bool:
        return self.minion_config(name).get("master_type") == "failover"

    # ----------------------------------------------------------------- process plumbing
    def _spawn(self, key: str, logdir: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        assert key not in self._procs or self._procs[key].poll() is not None, f"{key} is already running"
        _LIVE.add(self)  # from now on atexit / SIGTERM stop this lab
        _install_sigterm_handler()
        with open(self.path(logdir, "stdout.log"), "ab") as out, open(self.path(logdir, "stderr.log"), "ab") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env or self.env, start_new_session=True
            )
        self._procs[key] = proc
        self.pgids.append(proc.pid)
        return proc

    def _kill(self, key: str, sig: signal.Signals | None = None) -> None:
        """Kill a daemon's process group: SIGTERM with SIGKILL fallback, or straight SIGKILL."""
        proc = self._procs.pop(key, None)
        if proc is None:
            return
        _kill_groups([proc.pid], grace=0 if sig == signal.SIGKILL else 10.0)
        proc.wait(timeout=10)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float, key: str, logs: Iterable[Path]) -> None:
        """Poll `ready` until true; raise AssertionError with log tails on timeout or if `key` died."""
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self._procs.get(key)
            if proc is None or proc.poll() is not None:
                reason = "is not running" if proc is None else f"exited with code {proc.returncode}"
            elif time.monotonic() > deadline:
                reason = f"not ready after {timeout} s"
            else:
                time.sleep(0.1)
                continue
            tails = "\n".join(_tail(p) for p in logs)
            raise AssertionError(f"{what} {reason} (root {self.root})\n{tails}")

    def _bin(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)

    # ----------------------------------------------------------------- lifecycle
    def start(self, minions_up: Iterable[str] | None = None) -> Lab:
        self.start_redis()
        for name in self.masters:
            self.start_master(name)
        for name in self.minions if minions_up is None else minions_up:
            self.start_minion(name)
        return self

    def stop(self) -> None:
        keys = list(self._procs)
        minions = [self._procs[k].pid for k in keys if k.startswith("minion:")]
        daemons = [self._procs[k].pid for k in keys if not k.startswith("minion:")]
        try:
            # Minions take 5-6.5 s to honour SIGTERM (P10) and hold no state we keep: kill them outright.
            _kill_groups(minions, grace=0)
            _kill_groups(daemons)
        finally:
            for key in keys:
                self._procs.pop(key).wait(timeout=10)
            _LIVE.discard(self)
            if self.root and os.environ.get("JRE_KEEP") != "1":
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = ""

    def __enter__(self) -> Lab:
        try:
            return self.start()
        except BaseException:  # __exit__ will not run: do not leave daemons behind
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- redis
    def start_redis(self) -> None:
        self._ensure_prepared()
        d = self.path("redis")
        argv = ["/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", ""]
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.redis_aof else ["--appendonly", "no"]
        argv += [*aof, "--daemonize", "no", "--dir", str(d), "--logfile", str(d / "redis.log")]
        self._spawn("redis", "redis", argv)
        client = self.redis(socket_timeout=1, socket_connect_timeout=1)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        self._wait("redis-server", pong, 15, "redis", [d / "redis.log", d / "stderr.log"])
        client.close()

    def stop_redis(self) -> None:
        self._kill("redis")

    def redis(self, **kwargs: object) -> redis.Redis:
        """A client on the lab redis (decode_responses=True unless overridden)."""
        return redis.Redis(host="127.0.0.1", port=self.redis_port, **{"decode_responses": True, **kwargs})

    # ----------------------------------------------------------------- masters
    @staticmethod
    def _name_timeout(name: str | float | None, timeout: float) -> tuple[str | None, float]:
        """Accept the old positional ``(timeout)`` call form as well as ``(name, timeout)``."""
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            return None, float(name)
        return name, timeout

    def _master_logs(self, name: str) -> list[Path]:
        return [self.master_path(name, "master.log"), self.master_path(name, "stderr.log")]

    def start_master(self, name: str | None = None, timeout: float = 30) -> None:
        """Start a master (default: the first) and wait for its two ports (and its engine)."""
        name, timeout = self._name_timeout(name, timeout)
        self._ensure_prepared()
        name = self._master(name)
        argv = [self._bin("salt-master"), "-c", str(self.master_path(name)), "-l", "quiet"]
        self._spawn(f"master:{name}", name, argv, {**self.env, **self.master_env.get(name, {})})
        ip = self.master_ip(name)
        ports_up = lambda: _listening(self.publish_port, ip) and _listening(self.ret_port, ip)  # noqa: E731
        self._wait(f"salt-master {name}", ports_up, timeout, f"master:{name}", self._master_logs(name))
        # sync mode: the engine can only exist after sync_all + restart (P5)
        extmods = self.master_path(name, "extmods")
        engine_installed = self.install != "sync" or (extmods / "engines" / "job_retry.py").exists()
        if self.wait_for_engine and engine_installed:
            self.wait_engine(name, timeout)

    def stop_master(self, name: str | None = None) -> None:
        self._kill(f"master:{self._master(name)}")

    def master_running(self, name: str | None = None) -> bool:
        proc = self._procs.get(f"master:{self._master(name)}")
        return proc is not None and proc.poll() is None

    def restart_master(self, name: str | None = None, timeout: float = 60) -> None:
        """Restart a master (default: the first) and wait until the minions it served reconnected (P11, P12).

        Waits for one new ready line from every minion in ``connected_masters`` of this master. A
        failover minion does not wait for the restart: it moves to the next master of its list
        within ~1 s of the stop (its ready line then comes from that master) and stays there.
        """
        name, timeout = self._name_timeout(name, timeout)
        name = self._master(name)
        up = [m for m in self.minions if name in self.connected_masters(m)]
        for minion in up:
            self._ready_offset[minion] = self._log_size(minion)
        self.stop_master(name)
        self.start_master(name)
        for minion in up:
            self.wait_minion(minion, timeout, count=1)

    def engine_pids(self, name: str | None = None) -> list[int]:
        """Pids of a master's job_retry engine: titled ENGINE_TITLE at first, ``Engine`` once Salt restarted it."""
        proc = self._procs.get(f"master:{self._master(name)}")
        if proc is None:
            return []
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if os.getpgid(int(pid)) != proc.pid:
                    continue
            except OSError:
                continue
            if ENGINE_TITLE in title or title.split()[-1:] == ["Engine"]:
                pids.append(int(pid))
        return pids

    def engine_running(self, name: str | None = None) -> bool:
        return bool(self.engine_pids(name))

    def wait_engine(self, name: str | None = None, timeout: float = 30) -> None:
        """Wait for a master's job_retry engine process (by its process title), then give it 1 s to subscribe."""
        name, timeout = self._name_timeout(name, timeout)
        name = self._master(name)
        self._wait(
            f"engine process {ENGINE_TITLE} of {name}",
            lambda: self.engine_running(name),
            timeout,
            f"master:{name}",
            self._master_logs(name),
        )
        time.sleep(1)

    def master_log(self, name: str | None = None) -> str:
        path = self.master_path(name, "master.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def published_count(self, jid: str, master: str | None = None) -> int:
        """How many times `jid` was published: by one master, or (master=None) by all of them together.

        Counts the INFO line Salt 3008 writes in ``ClearFuncs._prep_pub`` (salt/master.py), in the
        same call that fires ``salt/job/<jid>/new``, for every publish that reaches the master's
        request server (CLI, LocalClient in engines/runners, find_job, same-jid replays):
        ``[salt.master ...][INFO    ] User root Published command <fun> with jid <jid>``
        (``Published command <fun> with jid <jid>`` when the load has no user).
        The master writes its log through a queue: poll (``wait_published``) rather than read once.
        """
        pattern = re.compile(rf"Published command \S+ with jid {re.escape(jid)}\s*$", re.MULTILINE)
        names = self.masters if master is None else (self._master(master),)
        return sum(len(pattern.findall(self.master_log(name))) for name in names)

    def published_counts(self, jid: str) -> dict[str, int]:
        """``{master name: published_count(jid, master)}`` for every master."""
        return {name: self.published_count(jid, name) for name in self.masters}

    def wait_published(self, jid: str, count: int = 1, master: str | None = None, timeout: float = 30) -> int:
        """Poll published_count until it reaches `count` or `timeout` passes; return the last count."""
        deadline = time.monotonic() + timeout
        while (found := self.published_count(jid, master)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    # ----------------------------------------------------------------- minions
    def _log_size(self, name: str) -> int:
        path = self.path(name, "minion.log")
        return path.stat().st_size if path.exists() else 0

    def minion_log_offset(self, name: str) -> int:
        """The minion log's size now: pass it as ``wait_minion(..., since=)`` before a change, e.g.
        ``off = lab.minion_log_offset("alpha"); lab.start_master("m2"); lab.wait_minion("alpha", count=1, since=off)``.
        """
        return self._log_size(name)

    def start_minion(self, name: str, wait: bool = True, timeout: float = 30) -> None:
        assert name in self.minions, f"unknown minion {name!r}; configured: {self.minions}"
        self._ensure_prepared()
        self._ready_offset[name] = self._start_offset[name] = self._log_size(name)
        running = [m for m in self._minion_masters(name) if self.master_running(m)]
        self._first_master[name] = running[0] if running else None
        argv = [self._bin("salt-minion"), "-c", str(self.path(name)), "-l", "quiet", "--disable-keepalive"]
        self._spawn(f"minion:{name}", name, argv)
        if wait:
            self.wait_minion(name, timeout)

    def connected_masters(self, name: str) -> list[str]:
        """The masters a running minion is (by the harness's account) connected to, in config order.

        single/hot: every running master its config lists. failover: the first listed master that
        was running at start_minion(), or the one named in the minion's last
        ``Re-initialising subsystems for new master <ip>`` log line (logged when it fails over).
        """
        if not self.minion_running(name):
            return []
        if not self._is_failover(name):
            return [m for m in self._minion_masters(name) if self.master_running(m)]
        current = self._first_master.get(name)
        log = self.path(name, "minion.log")
        if log.exists():
            with log.open("rb") as fh:
                fh.seek(self._start_offset.get(name, 0))
                moves = re.findall(rb"Re-initialising subsystems for new master (\S+)", fh.read())
            by_ip = {self.master_ip(m): m for m in self.masters}
            if moves:
                current = by_ip.get(moves[-1].decode())
        return [current] if current else []

    def expected_ready(self, name: str) -> int:
        """Ready lines a fresh start logs: 1 for single/failover, one per running listed master for hot."""
        if self._is_failover(name):
            return 1
        return max(1, sum(self.master_running(m) for m in self._minion_masters(name)))

    def ready_count(self, name: str, since: int | None = None) -> int:
        """Ready lines the minion logged after byte offset `since` (default: its last start/restart)."""
        log = self.path(name, "minion.log")
        if not log.exists():
            return 0
        with log.open("rb") as fh:
            fh.seek(self._ready_offset.get(name, 0) if since is None else since)
            return fh.read().count(READY_LINE.encode())

    def wait_minion(self, name: str, timeout: float = 30, count: int | None = None, since: int | None = None) -> None:
        """Wait for `count` ready lines (default expected_ready) after `since` (default: last start/restart, P12).

        A hot minion logs the line once per master it connects to; a failover minion once per
        master it moves to. restart_master() and start_minion() call this for you.
        """
        want = self.expected_ready(name) if count is None else count
        log = self.path(name, "minion.log")
        self._wait(
            f"salt-minion {name} ({want} ready line(s))",
            lambda: self.ready_count(name, since) >= want,
            timeout,
            f"minion:{name}",
            [log, self.path(name, "stderr.log")],
        )

    def kill_minion(self, name: str) -> None:
        """SIGKILL the minion's process group: an instant outage (P10)."""
        self._kill(f"minion:{name}", signal.SIGKILL)

    def freeze_minion(self, name: str, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the minion's process group: alive, connected, silent."""
        os.killpg(self._procs[f"minion:{name}"].pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def minion_running(self, name: str) -> bool:
        proc = self._procs.get(f"minion:{name}")
        return proc is not None and proc.poll() is None

    # ----------------------------------------------------------------- CLIs
    def _cli(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)

    def salt(self, *args: str, timeout: float = 60, master: str | None = None) -> subprocess.CompletedProcess:
        return self._cli([self._bin("salt"), "-c", str(self.master_path(master)), *args], timeout)

    def salt_async(self, tgt: str, fun: str, *args: str, tgt_type: str | None = None, master: str | None = None) -> str:
        """Publish with --async (no find_job, P17) through a master (default: the first); return the jid."""
        target = ["-L", tgt] if tgt_type == "list" else [tgt]
        proc = self.salt("--async", *target, fun, *args, master=master)
        match = re.search(r"Executed command with job ID: (\d+)", proc.stdout)
        if not match:
            raise AssertionError(f"no jid from salt --async (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}")
        return match.group(1)

    def run(self, fun: str, *args: str, timeout: float = 120, master: str | None = None) -> tuple[int, object]:
        """salt-run --out=json: (exit code, parsed stdout or the raw string). stderr is noise (P15)."""
        argv = [self._bin("salt-run"), "-c", str(self.master_path(master)), "--out=json", fun, *args]
        proc = self._cli(argv, timeout)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            return proc.returncode, proc.stdout

    def sync_all(self, master: str | None = None) -> dict:
        """salt-run saltutil.sync_all (install="sync") on one master, or (None) on every master.

        Returns the (first) master's output. Follow with restart_master() for the engine (P5).
        """
        outputs = []
        for name in self.masters if master is None else (self._master(master),):
            code, out = self.run("saltutil.sync_all", master=name)
            assert code == 0 and isinstance(out, dict), f"saltutil.sync_all on {name} failed (exit {code}): {out}"
            outputs.append(out)
        return outputs[0]

    # ----------------------------------------------------------------- trace jobs (P14)
    def trace_cmd(self, tag: str) -> str:
        assert re.fullmatch(r"[\w.:-]+", tag), f"trace tag must be [A-Za-z0-9_.:-]: {tag!r}"
        return f'echo "{tag} {{{{ grains.id }}}}" >> {self.path("trace")}/{{{{ grains.id }}}}.log'

    def publish_trace(self, tgt: str, tag: str, tgt_type: str | None = None, master: str | None = None) -> str:
        return self.salt_async(tgt, "cmd.run", self.trace_cmd(tag), "template=jinja", tgt_type=tgt_type, master=master)

    def trace_lines(self, minion: str) -> list[str]:
        """The minion's trace file, line by line in the order written ([] if it does not exist yet)."""
        path = self.path("trace", f"{minion}.log")
        return path.read_text().splitlines() if path.exists() else []

    def trace_count(self, minion: str, tag: str) -> int:
        return self.trace_lines(minion).count(f"{tag} {minion}")

    def wait_trace(self, minion: str, tag: str, count: int = 1, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while (found := self.trace_count(minion, tag)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def wait_lines(self, minion: str, predicate: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
        """Poll trace_lines(minion) until predicate(lines) is true or `timeout` passes; return the last lines.

        Does not raise: assert on ``predicate(result)`` (or on the lines themselves) in the test.
        """
        deadline = time.monotonic() + timeout
        while not predicate(lines := self.trace_lines(minion)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return lines

    # ----------------------------------------------------------------- state runs (jr.touch / top.sls)
    @staticmethod
    def _pillar(mark: str | None, sleep: float | None) -> list[str]:
        pillar: dict[str, object] = {}
        if mark is not None:
            assert re.fullmatch(r"[\w.:-]+", mark), f"mark must be [A-Za-z0-9_.:-]: {mark!r}"
            pillar["mark"] = mark
        if sleep is not None:
            pillar["sleep"] = sleep
        return [f"pillar={json.dumps(pillar)}"] if pillar else []

    def publish_state(
        self,
        tgt: str,
        mark: str,
        sleep: float = 3,
        fun: str = "state.apply",
        master: str | None = None,
        tgt_type: str | None = None,
        extra: Iterable[str] = (),
    ) -> str:
        """``salt --async <tgt> <fun> jr.touch pillar={"mark": mark, "sleep": sleep} [extra...]``; return the jid.

        The state sleeps `sleep` s, then appends ``"<mark> <id>"`` to the minion's trace file
        (trace_count / trace_lines / wait_trace see it). `fun` is state.apply or state.sls;
        `extra` adds CLI args such as ``"queue=True"``.
        """
        args = ["jr.touch", *self._pillar(mark, sleep), *extra]
        return self.salt_async(tgt, fun, *args, tgt_type=tgt_type, master=master)

    def publish_highstate(
        self,
        tgt: str,
        master: str | None = None,
        fun: str = "state.highstate",
        tgt_type: str | None = None,
        mark: str | None = None,
        sleep: float | None = None,
        extra: Iterable[str] = (),
    ) -> str:
        """``salt --async <tgt> state.highstate`` (or fun="state.apply" without arguments); return the jid.

        top.sls applies jr.hs: sleep 2 s (pillar `sleep`), then append ``"hs <id>"`` (pillar `mark`)
        to the trace file. ``startup_states: highstate`` in minion_extra runs the same thing.
        """
        return self.salt_async(tgt, fun, *self._pillar(mark, sleep), *extra, tgt_type=tgt_type, master=master)


def _stop_quietly(lab: Lab) -> None:
    try:
        lab.stop()
    except Exception as exc:  # keep stopping the others
        print(f"saltlab: stopping {lab.root}: {exc}", file=sys.stderr)


def _stop_all() -> None:
    for lab in list(_LIVE):
        _stop_quietly(lab)


def _on_sigterm(signum: int, frame: object) -> None:
    _stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    """Stop the labs on SIGTERM too (atexit does not run then), unless someone else handles it."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


atexit.register(_stop_all)
