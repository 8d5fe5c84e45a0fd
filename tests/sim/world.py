"""
One simulated history: the real salt-job-retry core driven by a simulated Salt.

Everything is fixed by one integer seed (``random.Random(seed)``): the topology, the
configuration, and every action. One clock (``World.now``) serves the stores, the engine
loops, the minions and fakeredis itself (its key expiry), so hours pass in milliseconds.
No threads, no wall clock.

What is real: ``Store`` (its Lua scripts run by fakeredis + lupa, as in tests/unit),
``Recorder`` (the returner's and the engine's), ``Replayer`` and ``EngineLoop`` (fed by a
``next_event`` callable, with an injected clock, sleep and probe) and the runner's
``commands.flush`` / ``commands.retry``. What is simulated is Salt:

- masters A (and B): a bus per master; the returner (``event_return``) reads every bus
  event, the engine reads what its subscriber gets; the master's job cache hands every
  publish and every minion return to the recorder directly (the trust model), through
  ``record()``, the one adapter that calls ``Recorder.record``.
- minions: a process (pid) that is up or down, connected to one master, to both (hot
  multi-master) or to one at a time (failover); a publish reaches only connected
  processes; a process drops a jid it already received (``jid_queue``, last 100); a
  ``state.*`` run meeting another is refused with Salt's refusal return; replays are
  acknowledged (``salt/job/<jid>/start/<id>``) by 3008 minions; a return goes back to the
  master that published the job, if the minion is still connected to it; a start event per
  (re)connection, with or without ``grains.pid``.
- faults: minion stop/start (new pid), reconnect (same pid), failover switch, engine crash
  (restarted 1-10 s later as new objects over the same Redis), bus drops for the engine's
  subscriber, a returner running behind, an operator's flush/retry, forged events.
"""

from __future__ import annotations

import datetime
import heapq
import inspect
import logging
import os
import random
import sys
import tempfile
import time as _time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "_utils") not in sys.path:
    sys.path.insert(0, str(REPO / "_utils"))

import fakeredis  # noqa: E402
import fakeredis._socket._base as _fake_base  # noqa: E402
import fakeredis.commands_mixins.server_mixin as _fake_server_mixin  # noqa: E402
from salt_job_retry import commands, config  # noqa: E402
from salt_job_retry.recorder import Recorder  # noqa: E402
from salt_job_retry.replay import EngineLoop, Replayer  # noqa: E402
from salt_job_retry.spool import Spool  # noqa: E402
from salt_job_retry.store import Store  # noqa: E402

T0 = 1_800_000_000.0
JID_QUEUE = 100  # Salt's minion_jid_queue_hwm
TRUSTED_SUPPORTED = "trusted" in inspect.signature(Recorder.record).parameters
SPOOL_ROOT = tempfile.mkdtemp(prefix="jr-sim-spool-")  # never written: Redis never goes down here


@contextmanager
def quiet_core():
    """The core's log lines (thousands per history) off while a history runs, and back after:
    other tests in the same process read them (caplog)."""
    core = logging.getLogger("salt_job_retry")
    saved = core.level
    core.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        core.setLevel(saved)


def record(recorder: Recorder, events: list[dict], trusted: bool) -> None:
    """
    The one place the world calls Recorder.record.

    trusted: the master's job cache hands over a publish or a minion's return (Salt's
    save_load / store_job). Before the trust model, record() had no `trusted` keyword and
    jobs and returns were recorded from the bus by event_return: then the job-cache call
    is skipped, since the same event goes on the bus and event_return records it.
    """
    if trusted and not TRUSTED_SUPPORTED:
        return
    if TRUSTED_SUPPORTED:
        recorder.record(events, trusted=trusted)
    else:
        recorder.record(events)


def stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


class _SimTime:
    """Stands in for the `time` module inside fakeredis: key expiry and TIME follow the world."""

    def __init__(self, world: World):
        self.world = world

    def time(self) -> float:
        return self.world.now

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


@contextmanager
def fakeredis_clock(world: World):
    saved = _fake_base.time, _fake_server_mixin.time
    _fake_base.time = _fake_server_mixin.time = _SimTime(world)
    try:
        yield
    finally:
        _fake_base.time, _fake_server_mixin.time = saved


# -- what happened (for the oracle) ------------------------------------------------------------


@dataclass
class Job:
    jid: str
    label: str
    fun: str
    arg: list
    targets: list[str]
    t: float
    master: str
    received: set[str] = field(default_factory=set)  # got it from Salt at publish
    forged: bool = False


@dataclass
class Run:
    """A minion process executing a job (refusals and dropped duplicates are not runs)."""

    minion: str
    pid: int
    orig: str  # the job's original jid
    pub: str  # the jid it came under
    fun: str
    master: str
    t: float
    kind: str  # live | replay | retry
    attempt: int = 0
    end: float | None = None
    died: bool = False  # its process ended before it finished
    returned_at: float | None = None  # its return reached a master's job cache


@dataclass
class Publish:
    """A replay or retry the core handed to Salt."""

    t: float
    master: str
    minion: str
    pub: str
    orig: str
    attempt: int
    delivered: str  # ran | refused | dropped | not-connected | down


# -- the simulated Salt ----------------------------------------------------------------------------


class Minion:
    def __init__(self, world: World, mid: str):
        self.world = world
        self.id = mid
        self.pid: int | None = None
        self.masters: list[str] = []
        self.jid_queue: deque[str] = deque(maxlen=JID_QUEUE)
        self.running: dict[str, Run] = {}
        self.starts: list[tuple[float, int, str, bool]] = []  # (t, pid, master, an engine got it)

    @property
    def up(self) -> bool:
        return self.pid is not None

    def connect(self, master: str) -> None:
        w = self.world
        self.masters.append(master)
        data = {"id": self.id, "cmd": "_minion_event", "_stamp": stamp(w.now)}
        if w.p.pid_in_start:
            data["grains"] = {"pid": self.pid}
        seen = w.masters[master].fire({"tag": f"salt/minion/{self.id}/start", "data": data})
        self.starts.append((w.now, self.pid, master, seen))

    def receive(self, master: str, jid: str, job: Job | dict, meta: dict | None, kind: str, attempt: int = 0) -> str:
        """A publish reaches this process. Returns what became of it."""
        w = self.world
        fun = job["fun"] if isinstance(job, dict) else job.fun
        arg = job.get("arg", []) if isinstance(job, dict) else job.arg
        if jid in self.jid_queue:
            return "dropped"
        self.jid_queue.append(jid)
        orig = (meta or {}).get("job_retry", {}).get("orig_jid") or jid
        if meta is not None and w.p.acks:  # replays ask for --start-event; 3008 minions ack
            inner = {"id": self.id, "jid": jid, "fun": fun, "arg": arg, "metadata": meta}
            tag = f"salt/job/{jid}/start/{self.id}"
            data = {"id": self.id, "cmd": "_minion_event", "data": inner, "tag": tag, "_stamp": stamp(w.now)}
            data["pid"] = self.pid  # for the oracle only (which process acked); the core ignores it
            w.masters[master].fire({"tag": tag, "data": data})
        if fun.startswith("state."):
            blocking = next((r for r in self.running.values() if r.fun.startswith("state.")), None)
            if blocking is not None:
                text = (
                    f'The function "{blocking.fun}" is running as PID {self.pid + 1} and was started at '
                    f"2026, Nov 22 05:08:16.467566 with jid {blocking.pub}"
                )
                ret = self._ret(jid, fun, arg, meta, [text], 1)
                w.masters[master].minion_return(ret)
                return "refused"
        run = Run(self.id, self.pid, orig, jid, fun, master, w.now, kind, attempt)
        self.running[jid] = run
        w.runs.append(run)
        w.schedule(w.now + w.duration(), ("finish", self.id, self.pid, jid))
        return "ran"

    def _ret(self, jid: str, fun: str, arg: list, meta: dict | None, value: Any, retcode: int) -> dict:
        data = {
            "cmd": "_return",
            "id": self.id,
            "jid": jid,
            "fun": fun,
            "fun_args": arg,
            "return": value,
            "retcode": retcode,
            "success": retcode == 0,
        }
        if meta is not None:
            data["metadata"] = meta
        return data

    def finish(self, pid: int, jid: str) -> None:
        run = self.running.get(jid)
        if run is None or pid != self.pid:
            return
        del self.running[jid]
        run.end = self.world.now
        if run.master in self.masters:
            meta = self.world.metas.get(jid)
            self.world.masters[run.master].minion_return(self._ret(jid, run.fun, [], meta, "ok", 0), run)
        else:
            self.world.log(f"{self.id} finished {self.world.name(jid)}; its master {run.master} is gone: return lost")

    def stop(self) -> None:
        for run in self.running.values():
            run.died, run.end = True, self.world.now
        self.pid, self.masters, self.running = None, [], {}
        self.jid_queue = deque(maxlen=JID_QUEUE)


class Engine:
    """One master's engine process: new objects over the same Redis on every (re)start."""

    def __init__(self, world: World, master: Master):
        self.bus: deque[dict] = deque()
        conf = world.conf
        replayer = Replayer(
            master.store, conf, master.replay_publish, lambda data, tag: None, world.fresh_jid, master.name
        )
        writer = Recorder(master.store, conf, Spool(os.path.join(SPOOL_ROOT, f"{master.name}-engine"), 1 << 20))
        self.loop = EngineLoop(
            replayer,
            lambda wait: self.bus.popleft() if self.bus else None,
            conf.interval,
            recorder=writer,
            probe=master.probe,
            clock=master.clock,
            sleep=lambda seconds: None,
        )


class Master:
    def __init__(self, world: World, name: str, server: fakeredis.FakeServer):
        self.world = world
        self.name = name
        self.clock = lambda: world.now
        self.store = Store(fakeredis.FakeRedis(server=server), world.conf, clock=self.clock, redis_clock=False)
        spool = Spool(os.path.join(SPOOL_ROOT, f"{name}-returner"), 1 << 20)
        # the returner on a master notes starts for that master's engine (if this core does)
        engine = {"engine": name} if "engine" in inspect.signature(Recorder).parameters else {}
        self.recorder = Recorder(self.store, world.conf, spool, **engine)
        self.returner_queue: list[dict] = []
        self.engine: Engine | None = Engine(world, self)
        self.restart_at: float | None = None

    def fire(self, event: dict) -> bool:
        """An event on this master's bus: event_return gets it; the engine's subscriber may not."""
        self.returner_queue.append(event)
        if self.engine is None:
            return False
        if self.world.p.lossy_bus and self.world.rng.random() < 0.05:
            self.world.log(f"bus {self.name}: engine missed {self.world.short(event['tag'])}")
            return False
        self.engine.bus.append(event)
        return True

    def minion_return(self, data: dict, run: Run | None = None) -> None:
        """A minion's return reaches this master: its job cache (store_job), then its bus."""
        event = {"tag": f"salt/job/{data['jid']}/ret/{data['id']}", "data": data}
        record(self.recorder, [event], trusted=True)
        if run is not None and TRUSTED_SUPPORTED:
            run.returned_at = self.world.now
        self.fire(event)

    def publish_event(self, jid: str, fun: str, arg: list, minions: list[str]) -> None:
        data = {
            "jid": jid,
            "fun": fun,
            "arg": arg,
            "tgt": minions,
            "tgt_type": "list",
            "user": "root",
            "minions": minions,
            "missing": [],
            "_stamp": stamp(self.world.now),
        }
        event = {"tag": f"salt/job/{jid}/new", "data": data}
        record(self.recorder, [event], trusted=True)  # Salt's save_load on the publish path
        self.fire(event)

    def replay_publish(
        self, minion: str, jid: str, job: dict, attempt: int, extra: dict | None = None, by: str = "engine"
    ) -> None:
        """The engine's (or a retry's) publish to one minion, as saltside.make_publisher does it."""
        w = self.world
        meta = {"job_retry": {"attempt": attempt, **(extra or {})}}
        w.metas[jid] = meta
        orig = (extra or {}).get("orig_jid") or jid
        self.publish_event(jid, job["fun"], job.get("arg", []), [minion])
        m = w.minions[minion]
        kind = "retry" if by == "operator" else "resend" if orig != jid else "replay"
        if not m.up:
            outcome = "down"
        elif self.name not in m.masters:
            outcome = "not-connected"
        else:
            outcome = m.receive(self.name, jid, job, meta, kind, attempt)
        w.publishes.append(Publish(w.now, self.name, minion, jid, orig, attempt, outcome))
        fresh = f" as {w.name(jid)}" if jid != orig else ""
        w.log(f"{self.name} {kind} {w.name(orig)}{fresh} -> {minion} (attempt {attempt}): {outcome}")

    def probe(self, minions: list[str], timeout: float) -> dict[str, str]:
        """grains.item pid through this master: only its connected minions answer."""
        w = self.world
        return {m: str(w.minions[m].pid) for m in minions if w.minions[m].up and self.name in w.minions[m].masters}


# -- the world -------------------------------------------------------------------------------------

FUNS = [
    ("cmd.run", ["echo a"]),
    ("cmd.run", ["echo b"]),
    ("state.apply", []),
    ("state.apply", []),
    ("state.sls", ["web"]),
    ("test.ping", []),  # excluded: never recorded for replay
]


@dataclass
class Params:
    seed: int
    masters: int
    topology: str  # single | hot | failover
    minions: int
    actions: int
    pid_in_start: bool
    acks: bool
    lossy_bus: bool
    returner_lag: bool
    forge: bool
    operator: bool
    engine_crash: bool
    long_jobs: bool
    options: dict

    @classmethod
    def draw(cls, seed: int, rng: random.Random) -> Params:
        masters = rng.choice([1, 1, 2])
        return cls(
            seed=seed,
            masters=masters,
            topology="single" if masters == 1 else rng.choice(["hot", "failover"]),
            minions=rng.randint(1, 3),
            actions=rng.randint(10, 40),
            pid_in_start=rng.random() < 0.7,
            acks=rng.random() < 0.7,
            lossy_bus=rng.random() < 0.2,
            returner_lag=rng.random() < 0.3,
            forge=rng.random() < 0.15,
            operator=rng.random() < 0.3,
            engine_crash=rng.random() < 0.3,
            long_jobs=rng.random() < 0.3,
            options={
                "timeout": rng.choice([5, 30]),
                "replay_wait": rng.choice([20, 60]),
                "claim_lease": 10,
                "interval": 10,
                "max_attempts": 3,
                "max_refusals": rng.choice([4, 8]),
                "ttl": 86400,
            },
        )

    def describe(self) -> str:
        flags = [
            f
            for f in (
                "pid_in_start",
                "acks",
                "lossy_bus",
                "returner_lag",
                "forge",
                "operator",
                "engine_crash",
                "long_jobs",
            )
            if getattr(self, f)
        ]
        opts = " ".join(f"{k}={v}" for k, v in self.options.items() if k in ("timeout", "replay_wait"))
        return f"{self.masters} master(s) {self.topology}, {self.minions} minion(s), {opts}; " + " ".join(flags)


class World:
    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.p = Params.draw(seed, self.rng)
        self.conf = config.load({"enabled": True, **self.p.options})
        self.now = T0
        self.trace: list[str] = []
        self.jids = 0
        self.labels: dict[str, str] = {}
        self.jobs: dict[str, Job] = {}
        self.runs: list[Run] = []
        self.publishes: list[Publish] = []
        self.metas: dict[str, dict] = {}
        self.flushed: set[tuple[str, str]] = set()
        self.retries: list[tuple[float, str]] = []
        self.acked: dict[tuple[str, str, int], float] = {}  # (pub jid, minion, pid) -> when its ack was recorded
        self.timers: list[tuple[float, int, tuple]] = []
        self.timer_seq = 0
        self.pids = iter(range(1000, 10**6, 7))
        with fakeredis_clock(self):
            self.server = fakeredis.FakeServer()
            self.masters = {name: Master(self, name, self.server) for name in "AB"[: self.p.masters]}
            self.minions = {f"m{i}": Minion(self, f"m{i}") for i in range(1, self.p.minions + 1)}
            for m in self.minions.values():
                if self.rng.random() < 0.8:
                    self.minion_up(m)

    # -- helpers --

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now - T0:8.1f}s  {text}")

    def new_jid(self, prefix: str) -> str:
        self.jids += 1
        jid = f"2026{self.jids:016d}"
        self.labels[jid] = f"{prefix}{self.jids}"
        return jid

    def fresh_jid(self) -> str:
        return self.new_jid("f")

    def name(self, jid: str) -> str:
        return self.labels.get(jid, jid)

    def short(self, tag: str) -> str:
        parts = tag.split("/")
        return "/".join(self.labels.get(p, p) for p in parts)

    def duration(self) -> float:
        if self.p.long_jobs and self.rng.random() < 0.3:
            return self.rng.uniform(20, 90)
        return self.rng.uniform(0.5, 4)

    def schedule(self, at: float, what: tuple) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (at, self.timer_seq, what))

    def up_masters(self) -> list[str]:
        return list(self.masters)

    # -- minion faults --

    def minion_up(self, m: Minion) -> None:
        m.pid = next(self.pids)
        m.jid_queue = deque(maxlen=JID_QUEUE)
        targets = list(self.masters)
        if self.p.topology == "failover":
            targets = [self.rng.choice(targets)]
        self.log(f"{m.id} starts (pid {m.pid}) -> {','.join(targets)}")
        for name in targets:
            m.connect(name)

    def minion_down(self, m: Minion) -> None:
        self.log(f"{m.id} stops (pid {m.pid})")
        m.stop()

    FAILOVER_AFTER = 3.0  # a failover minion leaves a master only after master_alive_interval

    def minion_reconnect(self, m: Minion) -> None:
        """A network blip or failover switch: same process, a start event on the new connection."""
        old = list(m.masters)
        if self.p.topology == "failover" and len(self.masters) > 1:
            if m.starts and self.now - m.starts[-1][0] < self.FAILOVER_AFTER:
                return
            targets = [n for n in self.masters if n not in old] or old
        else:
            targets = old
        self.log(f"{m.id} reconnects (same pid {m.pid}) {','.join(old)} -> {','.join(targets)}")
        m.masters = []
        for name in targets:
            m.connect(name)

    # -- jobs --

    def publish(self) -> None:
        master = self.masters[self.rng.choice(self.up_masters())]
        fun, arg = self.rng.choice(FUNS)
        ids = sorted(self.minions)
        targets = sorted(self.rng.sample(ids, self.rng.randint(1, len(ids))))
        jid = self.new_jid("j")
        job = Job(jid, self.name(jid), fun, list(arg), targets, self.now, master.name)
        self.jobs[jid] = job
        master.publish_event(jid, fun, list(arg), targets)
        outcomes = []
        for mid in targets:
            m = self.minions[mid]
            if m.up and master.name in m.masters:
                outcome = m.receive(master.name, jid, job, None, "live")
                if outcome != "dropped":
                    job.received.add(mid)
                outcomes.append(f"{mid}:{outcome}")
            else:
                outcomes.append(f"{mid}:{'down' if not m.up else 'elsewhere'}")
        self.log(f"{master.name} publishes {job.label} {fun}{arg or ''} -> {' '.join(outcomes)}")

    def forge(self) -> None:
        senders = [m for m in self.minions.values() if m.up]
        if not senders:
            return
        sender = self.rng.choice(senders)
        master = self.masters[sender.masters[0]]
        victim = self.rng.choice(sorted(self.minions))
        jobs = [j for j in self.jobs.values() if not j.forged]
        if jobs and self.rng.random() < 0.5:
            job = self.rng.choice(jobs)
            tag = f"salt/job/{job.jid}/ret/{victim}"
            data = {"id": sender.id, "cmd": "_minion_event", "jid": job.jid, "fun": job.fun, "return": "forged"}
            data["retcode"], data["success"] = 0, True
            self.log(f"{sender.id} forges a return of {job.label} from {victim}")
        else:
            jid = self.new_jid("x")
            self.jobs[jid] = Job(
                jid, self.name(jid), "cmd.run", ["rm -rf /"], [victim], self.now, master.name, forged=True
            )
            tag = f"salt/job/{jid}/new"
            data = {
                "id": sender.id,
                "cmd": "_minion_event",
                "jid": jid,
                "fun": "cmd.run",
                "arg": ["rm -rf /"],
                "tgt": [victim],
                "tgt_type": "list",
                "user": "root",
                "minions": [victim],
                "_stamp": stamp(self.now - 3600),
            }
            self.log(f"{sender.id} forges a new job {self.name(jid)} for {victim}")
        master.fire({"tag": tag, "data": data})

    # -- operator --

    def env(self, master: Master) -> SimpleNamespace:
        def probe(minions: list[str], jid: str, timeout: float) -> tuple[set[str], set[str]]:
            idle, running = set(), set()
            for mid in minions:
                m = self.minions[mid]
                if m.up and master.name in m.masters:
                    busy = any(r.orig == jid for r in m.running.values())
                    (running if busy else idle).add(mid)
            return idle, running

        return SimpleNamespace(
            opts={},
            conf=self.conf,
            store=master.store,
            fire=lambda data, tag: None,
            publish=lambda *args: master.replay_publish(*args, by="operator"),
            probe=probe,
            known_minions=lambda: set(self.minions),
            new_jid=self.fresh_jid,
        )

    def operator(self) -> None:
        master = self.masters[self.rng.choice(self.up_masters())]
        jobs = [j for j in self.jobs.values() if not j.forged and j.fun != "test.ping"]
        if not jobs:
            return
        job = self.rng.choice(jobs)
        if self.rng.random() < 0.5:
            minion = self.rng.choice(job.targets)
            whole = self.rng.random() < 0.3
            out = commands.flush(self.env(master), minion, None if whole else job.jid)
            cancelled = out.get("jids", [])
            for jid in cancelled:
                self.flushed.add((jid, minion))
            what = "everything" if whole else job.label
            self.log(f"operator flushes {what} on {minion} -> {[self.name(j) for j in cancelled]}")
        else:
            self.retries.append((self.now, job.jid))
            out = commands.retry(self.env(master), job.jid)
            self.log(f"operator retries {job.label} via {master.name} -> published {out.get('published')}")

    # -- engines --

    def crash_engine(self) -> None:
        live = [m for m in self.masters.values() if m.engine is not None]
        if not live:
            return
        master = self.rng.choice(live)
        master.engine = None
        master.restart_at = self.now + self.rng.uniform(1, 10)
        self.log(f"engine {master.name} crashes")

    def restart_engines(self, force: bool = False) -> None:
        for master in self.masters.values():
            if master.engine is None and (force or self.now >= (master.restart_at or 0)):
                master.engine = Engine(self, master)
                master.restart_at = None
                self.log(f"engine {master.name} restarts")

    # -- the loop --

    def pump(self) -> None:
        """Let Salt and the engines do what is due now."""
        while self.timers and self.timers[0][0] <= self.now:
            _, _, what = heapq.heappop(self.timers)
            if what[0] == "finish":
                self.minions[what[1]].finish(what[2], what[3])
        for master in self.masters.values():
            if master.returner_queue and not (self.p.returner_lag and self.rng.random() < 0.5):
                events, master.returner_queue = master.returner_queue, []
                record(master.recorder, events, trusted=False)  # event_return
                for event in events:
                    parts = event["tag"].split("/")
                    pid = event["data"].get("pid") if isinstance(event["data"], dict) else None
                    if len(parts) == 5 and parts[3] == "start" and pid is not None:
                        self.acked.setdefault((parts[2], parts[4], pid), self.now)
                if not TRUSTED_SUPPORTED:
                    self._note_returns(events)
        self.restart_engines()
        for master in self.masters.values():
            if master.engine is not None:
                master.engine.loop.step()

    def _note_returns(self, events: list[dict]) -> None:
        for event in events:
            parts = event["tag"].split("/")
            if len(parts) == 5 and parts[3] == "ret" and event["data"].get("cmd") == "_return":
                for run in self.runs:
                    if run.pub == parts[2] and run.minion == parts[4] and run.returned_at is None and run.end:
                        run.returned_at = self.now

    def advance(self, dt: float) -> None:
        self.now += dt
        self.pump()

    ACTIONS = (
        ("publish", 5),
        ("idle", 4),
        ("down", 2),
        ("up", 3),
        ("reconnect", 1),
        ("crash", 1),
        ("operator", 1),
        ("forge", 1),
        ("pause", 1),
    )

    def act(self) -> None:
        names = [a for a, _ in self.ACTIONS]
        weights = [w for _, w in self.ACTIONS]
        action = self.rng.choices(names, weights)[0]
        minions = list(self.minions.values())
        if action == "publish":
            self.publish()
        elif action == "down":
            up = [m for m in minions if m.up]
            if up:
                self.minion_down(self.rng.choice(up))
        elif action == "up":
            down = [m for m in minions if not m.up]
            if down:
                self.minion_up(self.rng.choice(down))
        elif action == "reconnect":
            up = [m for m in minions if m.up]
            if up:
                self.minion_reconnect(self.rng.choice(up))
        elif action == "crash" and self.p.engine_crash:
            self.crash_engine()
        elif action == "operator" and self.p.operator:
            self.operator()
        elif action == "forge" and self.p.forge:
            self.forge()
        elif action == "pause":  # a long quiet stretch: waits, leases and timeouts run out
            self.advance(self.rng.uniform(30, 150))

    def run(self) -> World:
        with fakeredis_clock(self), quiet_core():
            self.pump()
            for _ in range(self.p.actions):
                self.act()
                if not self.rng.random() < 0.2:  # mostly the engines react at once; sometimes a tick later
                    self.pump()
                self.advance(self.rng.choice([0.2, 1.0, 1.0, 2.0, 5.0, 10.0]))
            self.quiesce()
        return self

    QUIESCE_LIMIT = 4 * 3600.0

    def quiesce(self) -> None:
        """No more faults: every minion comes up, engines restart; run until nothing is left to do."""
        self.log("-- quiesce: every minion up, every engine running --")
        self.restart_engines(force=True)
        for m in self.minions.values():
            if not m.up:
                self.minion_up(m)
        start = self.now
        settle = self.conf.timeout + self.conf.interval + 2
        dt = 2.0
        while self.now - start < self.QUIESCE_LIMIT:
            self.advance(dt)
            if self.now - start >= settle and self.quiet():
                break
            dt = min(30.0, dt * 1.5) if not self.timers else 2.0
        self.log(f"-- quiet after {self.now - start:.0f}s --")

    def quiet(self) -> bool:
        if self.timers or any(m.returner_queue for m in self.masters.values()):
            return False
        if any(m.engine and m.engine.bus for m in self.masters.values()):
            return False
        store = next(iter(self.masters.values())).store
        return all(store.client.zcard(store.keys.active(name)) == 0 for name in self.masters)
