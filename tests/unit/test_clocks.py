"""
One clock across masters: each master's stamps are put on Redis' clock (TIME), so a master
whose clock is off neither hides a missed job nor makes a delivered one look owed.
"""

import time

import fakeredis
import pytest
from conftest import new_event
from salt_job_retry import config
from salt_job_retry.recorder import Recorder
from salt_job_retry.replay import Replayer
from salt_job_retry.spool import Spool
from salt_job_retry.store import Store

JID = "20261122050816467566"


class Master:
    """One master's returner and engine, its clock `offset` seconds off Redis'."""

    def __init__(self, server, tmp_path, name, offset):
        self.conf = config.load({"enabled": True, "timeout": 5})
        self.clock = lambda: time.time() + offset
        self.store = Store(fakeredis.FakeRedis(server=server), self.conf, clock=self.clock, redis_clock=True)
        self.recorder = Recorder(self.store, self.conf, Spool(str(tmp_path / name), self.conf.spool_max_bytes))
        self.published = []
        publish = lambda minion, jid, job, attempt, extra=None: self.published.append((minion, jid))  # noqa: E731
        self.replayer = Replayer(self.store, self.conf, publish, lambda data, tag: None, engine=name)

    def stamp(self):
        return self.clock()


@pytest.fixture
def masters(tmp_path):
    server = fakeredis.FakeServer()
    return Master(server, tmp_path, "ahead", 3600), Master(server, tmp_path, "true", 0)


def test_skew_is_measured_against_redis(masters):
    ahead, true = masters
    assert ahead.store.now() == pytest.approx(time.time(), abs=1)
    assert ahead.store.skew == pytest.approx(-3600, abs=1) and true.store.skew == pytest.approx(0, abs=1)


def test_job_published_by_a_master_an_hour_ahead_is_replayed_after_a_restart(masters):
    ahead, true = masters
    ahead.recorder.record([new_event(minions=["beta"], when=ahead.stamp())], trusted=True)  # beta was down
    time.sleep(0.01)
    start = true.store.now()  # beta restarts; the master with the true clock sees it
    true.store.note_starts("true", {"beta": (int(start * 1000), "100")})
    true.store.sweep()  # not needed to find it: a start gathers the unswept jobs that target it
    assert true.replayer.step("beta").published == JID
    assert true.published == [("beta", JID)]


def test_job_published_after_the_start_on_a_master_behind_is_not_replayed(masters, tmp_path):
    ahead, _ = masters
    behind = Master(ahead.store.client.connection_pool.connection_kwargs["server"], tmp_path, "behind", -3600)
    start = ahead.store.aligned(ahead.stamp())  # beta connected, seen by the master ahead
    ahead.store.note_starts("ahead", {"beta": (int(start * 1000), "100")})
    time.sleep(0.01)
    behind.recorder.record([new_event(minions=["beta"], when=behind.stamp())], trusted=True)  # Salt delivered it
    assert ahead.replayer.step("beta").published == ""
    assert ahead.published == []
