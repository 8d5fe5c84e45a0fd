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
        self.published = []  # (minion, jid, fun, attempt)
        self.publish_meta = []
        self.events = []  # (tag, data)
        self.publish_error = None
        self.fresh_jids = iter(f"2026112206{i:010d}" for i in range(1, 10**6))
        self.replayer = Replayer(self.store, self.conf, self.publish, self.fire, lambda: next(self.fresh_jids))

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
        return self.recorder.record(list(events))

    def serve(self, minion, started_at=None):
        """Serve a start of minion whose process started at started_at (epoch s; default now)."""
        started = self.clock.now if started_at is None else started_at
        return self.replayer.serve(minion, int(started * 1000))


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
