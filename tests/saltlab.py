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


def _tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"--- {path}: {exc}"
    return f"--- tail of {path} ---\n" + "\n".join(content[-lines:])


def _listening(port: int) -> bool:
    """True if something on the box listens on TCP port (/proc/net/tcp state 0A)."""
    want = f":{port:04X}"
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


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> int:
    """First of `count` consecutive free ports on 127.0.0.1 (P18)."""
    for _ in range(500):
        first = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        ports = range(first, first + count)
        if all(p not in _USED_PORTS and _bindable(p) for p in ports):
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


class Lab:
    """One redis-server, one salt-master and some salt-minions under a short temp root."""

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
    ) -> None:
        if install not in ("dirs", "sync", "pip"):
            raise ValueError(f"install must be dirs, sync or pip, not {install!r}")
        self.install = install
        self.job_retry_conf = dict(job_retry or {})
        self.minions = tuple(minions)
        self.master_extra = dict(master_extra or {})
        self.bin_dir = bin_dir
        self.env = {**os.environ, **(env or {})}
        self.wait_for_engine = wait_for_engine
        self.redis_aof = redis_aof  # appendonly yes, fsync always: survives a restart
        self.user = getpass.getuser()
        self.root = ""
        self.redis_port = self.publish_port = self.ret_port = 0
        self.pgids: list[int] = []  # every process group ever started, for leak checks
        self._procs: dict[str, subprocess.Popen] = {}  # "redis", "master", "minion:<id>"
        self._ready_offset: dict[str, int] = {}  # minion -> log size when it was last started

    # ----------------------------------------------------------------- layout and configs
    def path(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    @property
    def master_dir(self) -> str:
        return str(self.path("master"))

    @property
    def extmods(self) -> Path:
        """The master's extension_modules dir (where sync_all puts modules)."""
        return self.path("master", "extmods")

    def _ensure_prepared(self) -> None:
        if not self.root:
            self._prepare()

    def _prepare(self) -> None:
        self.root = tempfile.mkdtemp(prefix="jre-", dir="/tmp")  # short root (P1)
        self.redis_port = _free_ports(1)
        self.publish_port = _free_ports(2)
        self.ret_port = self.publish_port + 1
        for sub in ("master", "redis", "srv", "trace", *self.minions):
            self.path(sub).mkdir()
        for sock_dir in (self.path("master", "sock"), *(self.path(m, "sock") for m in self.minions)):
            sock = f"{sock_dir}/{LONGEST_SOCK_NAME}"
            assert len(sock) <= MAX_SOCK_PATH, f"unix socket path too long ({len(sock)}): {sock}"
        if self.install == "sync":
            for sub in LOADER_DIRS.values():
                if (REPO / sub).is_dir():
                    shutil.copytree(REPO / sub, self.path("srv", sub), ignore=shutil.ignore_patterns("__pycache__"))
        self._write("master", "master", self.master_config())
        for name in self.minions:
            self._write(name, "minion", self.minion_config(name))

    def _write(self, sub: str, filename: str, config: dict) -> None:
        self.path(sub, filename).write_text(yaml.safe_dump(config, default_flow_style=False))

    def master_config(self) -> dict:
        m = self.master_dir
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
            "id": "e2e-master",
            "root_dir": m,
            "pki_dir": f"{m}/pki",
            "cachedir": f"{m}/cache",
            "sock_dir": f"{m}/sock",
            "extension_modules": f"{m}/extmods",  # P2
            "pidfile": f"{m}/master.pid",
            "log_file": f"{m}/master.log",
            "key_logfile": f"{m}/key.log",
            "log_level_logfile": "info",
            "interface": "127.0.0.1",
            "publish_port": self.publish_port,
            "ret_port": self.ret_port,
            "user": self.user,
            "auto_accept": True,
            "fileserver_backend": ["roots"],
            "file_roots": {"base": [str(self.path("srv"))]},
            "gather_job_timeout": 3,  # P4/P17
            "job_retry": job_retry,
            "event_return": "job_retry",
            "engines": [{"job_retry": {}}],
        }
        if self.install == "dirs":
            config.update({key: [str(REPO / sub)] for key, sub in LOADER_DIRS.items() if (REPO / sub).is_dir()})
        config.update(self.master_extra)
        return config

    def minion_config(self, name: str) -> dict:
        d = str(self.path(name))
        return {
            "id": name,
            "master": "127.0.0.1",
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
        }

    # ----------------------------------------------------------------- process plumbing
    def _spawn(self, key: str, logdir: str, argv: list[str]) -> subprocess.Popen:
        assert key not in self._procs or self._procs[key].poll() is not None, f"{key} is already running"
        _LIVE.add(self)  # from now on atexit / SIGTERM stop this lab
        _install_sigterm_handler()
        with open(self.path(logdir, "stdout.log"), "ab") as out, open(self.path(logdir, "stderr.log"), "ab") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env, start_new_session=True
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
        self.start_master()
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

    # ----------------------------------------------------------------- master
    def start_master(self, timeout: float = 30) -> None:
        self._ensure_prepared()
        self._spawn("master", "master", [self._bin("salt-master"), "-c", self.master_dir, "-l", "quiet"])
        logs = [self.path("master", "master.log"), self.path("master", "stderr.log")]
        ports_up = lambda: _listening(self.publish_port) and _listening(self.ret_port)  # noqa: E731
        self._wait("salt-master", ports_up, timeout, "master", logs)
        # sync mode: the engine can only exist after sync_all + restart (P5)
        engine_installed = self.install != "sync" or (self.extmods / "engines" / "job_retry.py").exists()
        if self.wait_for_engine and engine_installed:
            self.wait_engine(timeout)

    def stop_master(self) -> None:
        self._kill("master")

    def restart_master(self, timeout: float = 60) -> None:
        """Restart the master and wait until every minion that was up has reconnected (P11, P12)."""
        up = [m for m in self.minions if f"minion:{m}" in self._procs]
        for name in up:
            self._ready_offset[name] = self._log_size(name)
        self.stop_master()
        self.start_master()
        for name in up:
            self.wait_minion(name, timeout)

    def engine_running(self) -> bool:
        proc = self._procs.get("master")
        if proc is None:
            return False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if ENGINE_TITLE in cmdline and os.getpgid(int(pid)) == proc.pid:
                    return True
            except OSError:
                continue
        return False

    def wait_engine(self, timeout: float = 30) -> None:
        """Wait for the job_retry engine process (by its process title), then give it 1 s to subscribe."""
        logs = [self.path("master", "master.log"), self.path("master", "stderr.log")]
        self._wait(f"engine process {ENGINE_TITLE}", self.engine_running, timeout, "master", logs)
        time.sleep(1)

    def master_log(self) -> str:
        path = self.path("master", "master.log")
        return path.read_text(errors="replace") if path.exists() else ""

    # ----------------------------------------------------------------- minions
    def _log_size(self, name: str) -> int:
        path = self.path(name, "minion.log")
        return path.stat().st_size if path.exists() else 0

    def start_minion(self, name: str, wait: bool = True, timeout: float = 30) -> None:
        assert name in self.minions, f"unknown minion {name!r}; configured: {self.minions}"
        self._ensure_prepared()
        self._ready_offset[name] = self._log_size(name)
        argv = [self._bin("salt-minion"), "-c", str(self.path(name)), "-l", "quiet", "--disable-keepalive"]
        self._spawn(f"minion:{name}", name, argv)
        if wait:
            self.wait_minion(name, timeout)

    def wait_minion(self, name: str, timeout: float = 30) -> None:
        """Wait for the ready line after the offset the log had at the last start/restart (P12)."""
        log = self.path(name, "minion.log")

        def ready() -> bool:
            if not log.exists():
                return False
            with log.open("rb") as fh:
                fh.seek(self._ready_offset.get(name, 0))
                return READY_LINE.encode() in fh.read()

        self._wait(f"salt-minion {name}", ready, timeout, f"minion:{name}", [log, self.path(name, "stderr.log")])

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

    def salt(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self._cli([self._bin("salt"), "-c", self.master_dir, *args], timeout)

    def salt_async(self, tgt: str, fun: str, *args: str, tgt_type: str | None = None) -> str:
        """Publish with --async (no find_job, P17) and return the jid."""
        target = ["-L", tgt] if tgt_type == "list" else [tgt]
        proc = self.salt("--async", *target, fun, *args)
        match = re.search(r"Executed command with job ID: (\d+)", proc.stdout)
        if not match:
            raise AssertionError(f"no jid from salt --async (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}")
        return match.group(1)

    def run(self, fun: str, *args: str, timeout: float = 120) -> tuple[int, object]:
        """salt-run --out=json: (exit code, parsed stdout or the raw string). stderr is noise (P15)."""
        proc = self._cli([self._bin("salt-run"), "-c", self.master_dir, "--out=json", fun, *args], timeout)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            return proc.returncode, proc.stdout

    def sync_all(self) -> dict:
        """salt-run saltutil.sync_all (install="sync"); follow with restart_master() for the engine (P5)."""
        code, out = self.run("saltutil.sync_all")
        assert code == 0 and isinstance(out, dict), f"saltutil.sync_all failed (exit {code}): {out}"
        return out

    # ----------------------------------------------------------------- trace jobs (P14)
    def trace_cmd(self, tag: str) -> str:
        assert re.fullmatch(r"[\w.:-]+", tag), f"trace tag must be [A-Za-z0-9_.:-]: {tag!r}"
        return f'echo "{tag} {{{{ grains.id }}}}" >> {self.path("trace")}/{{{{ grains.id }}}}.log'

    def publish_trace(self, tgt: str, tag: str, tgt_type: str | None = None) -> str:
        return self.salt_async(tgt, "cmd.run", self.trace_cmd(tag), "template=jinja", tgt_type=tgt_type)

    def trace_count(self, minion: str, tag: str) -> int:
        path = self.path("trace", f"{minion}.log")
        if not path.exists():
            return 0
        return path.read_text().splitlines().count(f"{tag} {minion}")

    def wait_trace(self, minion: str, tag: str, count: int = 1, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while (found := self.trace_count(minion, tag)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return found


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
