from conftest import JID, T0, new_event, ret_event
from salt_job_retry.replay import EngineLoop

OLDER = "20261122050816460001"


def test_minion_back_before_timeout_still_gets_its_job(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(1)  # well before timeout: no sweep has queued it
    summary = h.replayer.replay_to("beta")
    assert summary["replayed"] == [JID]
    assert h.published == [("beta", JID, "cmd.run", 1)]
    assert h.tags("replayed") == [f"salt/job_retry/{JID}/replayed/beta"]


def test_swept_job_is_replayed_on_start_under_the_original_jid(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(6)
    assert [(j, m) for j, m, _ in h.replayer.sweep()] == [(JID, "beta")]
    assert h.tags("queued") == [f"salt/job_retry/{JID}/queued/beta"]
    assert h.store.pending(["beta"])["beta"][0]["jid"] == JID
    h.replayer.replay_to("beta")
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_sweep_waits_for_timeout_and_is_idempotent(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(4)
    assert h.replayer.sweep() == []
    h.clock.advance(2)
    assert len(h.replayer.sweep()) == 1
    h.record(new_event(minions=["beta"]))  # a replay's `new` re-adds the jid to unswept
    h.clock.advance(6)
    assert h.replayer.sweep() == []  # nothing newly queued, no second event
    assert len(h.tags("queued")) == 1


def test_returned_minion_is_never_replayed(h):
    h.record(new_event(minions=["alpha"]), ret_event("alpha"))
    h.clock.advance(60)
    h.replayer.sweep()
    for _ in range(3):
        assert h.replayer.replay_to("alpha")["replayed"] == []
    assert h.published == []


def test_replay_return_clears_the_queue(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    h.replayer.sweep()
    h.replayer.replay_to("beta")
    h.record(ret_event("beta", metadata={"job_retry": {"attempt": 1}}))
    assert h.store.pending(["beta"]) == {"beta": []}
    h.clock.advance(60)
    assert h.replayer.replay_to("beta")["replayed"] == []


def test_two_engines_one_start_one_replay(make):
    first = make()
    second = make()  # same fake server: a second master's engine
    first.record(new_event(minions=["beta"]))
    first.replayer.replay_to("beta")
    second.replayer.replay_to("beta")
    first.replayer.replay_to("beta")  # the legacy/duplicate start event
    assert len(first.published) + len(second.published) == 1


def test_lease_expiry_allows_the_next_attempt(h):
    h.record(new_event(minions=["beta"]))
    h.replayer.replay_to("beta")
    h.clock.advance(h.conf.claim_lease + 1)
    h.replayer.replay_to("beta")
    assert [p[3] for p in h.published] == [1, 2]


def test_job_that_kills_its_minion_stops_after_max_attempts(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    h.replayer.sweep()
    for _ in range(6):  # the minion dies during every replay and restarts
        h.replayer.replay_to("beta")
        h.clock.advance(h.conf.claim_lease + 1)
    assert [p[3] for p in h.published] == [1, 2, 3]
    assert h.tags("exhausted") == [f"salt/job_retry/{JID}/exhausted/beta"]
    assert h.store.pending(["beta"]) == {"beta": []}
    assert h.store.status(JID)["minions"]["beta"] == {"state": "exhausted", "attempts": 3}


def test_failed_publish_gives_the_attempt_back(h):
    h.record(new_event(minions=["beta"]))
    h.publish_error = RuntimeError("master said no")
    assert h.replayer.replay_to("beta")["failed"] == [JID]
    h.publish_error = None
    h.replayer.replay_to("beta")
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_owed_jobs_replay_oldest_first(h):
    h.record(new_event(minions=["beta"], when=T0 + 2), new_event(jid=OLDER, minions=["beta"], when=T0))
    h.clock.advance(10)
    h.replayer.sweep()
    h.replayer.replay_to("beta")
    assert [p[1] for p in h.published] == [OLDER, JID]


def test_expired_job_is_dropped_from_the_queue(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    h.replayer.sweep()
    h.redis.delete(h.store.keys.job(JID))  # the ttl ran out
    assert h.replayer.replay_to("beta")["replayed"] == []
    assert h.redis.zcard(h.store.keys.queue("beta")) == 0


class Feed:
    def __init__(self, events):
        self.events = list(events)

    def __call__(self, wait):
        return self.events.pop(0) if self.events else None


def loop_for(h, events, interval=100.0):
    clock = [0.0]
    sleeps = []
    loop = EngineLoop(h.replayer, Feed(events), interval, clock=lambda: clock[0], sleep=sleeps.append)
    return loop, clock, sleeps


def start(minion, legacy=False):
    tag = "minion_start" if legacy else f"salt/minion/{minion}/start"
    return {"tag": tag, "data": {"id": minion}}


def test_loop_reacts_to_the_new_start_tag_only(h):
    h.record(new_event(minions=["beta"]))
    loop, _, _ = loop_for(h, [start("beta", legacy=True), start("beta")])
    loop.step()
    assert h.published == []
    loop.step()
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_loop_sweeps_every_interval(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    loop, clock, _ = loop_for(h, [], interval=10)
    loop.step()
    assert len(h.tags("queued")) == 1
    h.record(new_event(jid=OLDER, minions=["beta"], when=h.clock.now))
    h.clock.advance(6)
    clock[0] = 5
    loop.step()
    assert len(h.tags("queued")) == 1  # interval not yet up
    clock[0] = 10
    loop.step()
    assert len(h.tags("queued")) == 2


def test_loop_survives_redis_outage_and_serves_the_start_later(h, caplog):
    h.record(new_event(minions=["beta"]))
    loop, clock, sleeps = loop_for(h, [start("beta")])
    h.server.connected = False
    loop.step()  # start event while Redis is down: no exception, backoff
    loop.step()
    assert sleeps == [1.0, 2.0]
    assert "Redis unreachable" in caplog.text
    h.server.connected = True
    loop.step()
    assert h.published == [("beta", JID, "cmd.run", 1)]
    assert loop.backoff == 0 and not loop.owed_retry


def test_loop_survives_unexpected_errors(h, caplog):
    loop, _, sleeps = loop_for(h, [start("beta")])
    h.replayer.replay_to = None  # any bug in the handler
    loop.step()
    assert sleeps == [1.0]
    assert "unexpected error" in caplog.text
