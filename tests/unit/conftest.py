from types import SimpleNamespace

import fakeredis
import pytest
from salt_job_retry import config
from salt_job_retry.recorder import Recorder
from salt_job_retry.replay import Replayer
from salt_job_retry.spool import Spool
from salt_job_retry.store import Store

T0 = 1_800_000_000.0
JID = "20261122050816467566"


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def new_event(jid=JID, minions=("alpha", "beta"), fun="cmd.run", arg=None, when=T0, **extra):
    data = {
        "jid": jid,
        "fun": fun,
        "arg": list(arg) if arg is not None else ["echo hi", {"__kwarg__": True, "template": "jinja"}],
        "tgt": "*",
        "tgt_type": "glob",
        "user": "root",
        "minions": list(minions),
        "missing": [],
        "_stamp": __import__("datetime").datetime.fromtimestamp(when, __import__("datetime").timezone.utc).isoformat(),
        **extra,
    }
    return {"tag": f"salt/job/{jid}/new", "data": data}


def ret_event(minion, jid=JID, fun="cmd.run", **extra):
    data = {"cmd": "_return", "id": minion, "jid": jid, "fun": fun, "return": "hi", "retcode": 0, "success": True}
    data.update(extra)
    return {"tag": f"salt/job/{jid}/ret/{minion}", "data": data}


class Harness:
    """A store, recorder and replayer on one fake Redis with a controllable clock."""

    def __init__(self, server, spool_dir, **options):
        self.server = server
        self.redis = fakeredis.FakeRedis(server=server)
        self.conf = config.load({"enabled": True, "timeout": 5, "claim_lease": 10, **options})
        self.clock = Clock()
        self.store = Store(self.redis, self.conf, clock=self.clock)
        self.recorder = Recorder(self.store, self.conf, Spool(str(spool_dir), self.conf.spool_max_bytes))
        self.recorder.redis_retry_after = 0  # tests bring Redis back at once (see test_trust for the pause)
        self.published = []  # (minion, jid, fun, attempt)
        self.publish_meta = []
        self.events = []  # (tag, data)
        self.publish_error = None
        self.fresh_jids = iter(f"2026112206{i:010d}" for i in range(1, 10**6))
        self.replayers = {}  # engine -> Replayer; all publish through this harness
        self.replayer = self.replayer_for("e1")
        self.pids = iter(range(1000, 10**6))  # serve(): every call is a new minion process
        self.last_step = None

    def publish(self, minion, jid, job, attempt, extra_meta=None):
        if self.publish_error:
            raise self.publish_error
        self.published.append((minion, jid, job["fun"], attempt))
        self.publish_meta.append(extra_meta or {})

    def fire(self, data, tag):
        self.events.append((tag, data))

    def tags(self, action):
        return [t for t, _ in self.events if f"/{action}/" in t]

    def record(self, *events):
        return self.recorder.record(list(events), trusted=True)

    def replayer_for(self, engine):
        """The replayer of one engine (one master) on the shared fake Redis."""
        if engine not in self.replayers:
            self.replayers[engine] = Replayer(
                self.store, self.conf, self.publish, self.fire, lambda: next(self.fresh_jids), engine=engine
            )
        return self.replayers[engine]

    def now_ms(self):
        """The clock the store's scripts see, in ms."""
        return int(self.clock.now * 1000)

    def start(self, minion, pid="100", at=None, engine="e1"):
        """engine's master saw minion (process pid; '' unknown) connect at `at` (epoch s; default now)."""
        stamp = self.clock.now if at is None else at
        return self.store.note_starts(engine, {minion: (int(stamp * 1000), pid)})[minion][0]

    def step(self, minion, engine="e1"):
        self.last_step = self.replayer_for(engine).step(minion)
        return self.last_step

    def drive(self, minion, engine="e1", limit=50):
        """Step minion until it waits or has nothing to do; returns what was published meanwhile."""
        before = len(self.published)
        for _ in range(limit):
            step = self.step(minion, engine)
            if step.probe or step.due_ms is None or step.due_ms > self.now_ms():
                return self.published[before:]
        raise AssertionError(f"{minion} never came to rest: {self.last_step}")

    def serve(self, minion, started_at=None):
        """A new process of minion connected at started_at (default now); drive its sequence."""
        self.start(minion, str(next(self.pids)), started_at)
        before = len(self.publish_meta)
        published = self.drive(minion)
        metas = self.publish_meta[before:]
        replayed = [meta.get("orig_jid", jid) for (_, jid, _, _), meta in zip(published, metas, strict=True)]
        return SimpleNamespace(replayed=replayed, step=self.last_step)


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def make(server, tmp_path):
    def factory(**options):
        return Harness(server, tmp_path / "spool", **options)

    return factory


@pytest.fixture
def h(make):
    return make()
