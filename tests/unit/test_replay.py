import contextlib

from conftest import JID, T0, new_event, ret_event
from salt_job_retry.replay import EngineLoop

OLDER = "20261122050816460001"


def ack_event(minion, jid=JID, when=None, **extra):
    """salt/job/<jid>/start/<id> as a 3008 minion fires it (a _minion_event wrapping the job fields)."""
    import datetime

    stamp = datetime.datetime.fromtimestamp(when or T0, datetime.timezone.utc).isoformat()
    inner = {"id": minion, "jid": jid, "fun": "cmd.run", "tgt": "beta", "tgt_type": "glob", "user": "root", **extra}
    tag = f"salt/job/{jid}/start/{minion}"
    return {"tag": tag, "data": {"id": minion, "cmd": "_minion_event", "data": inner, "tag": tag, "_stamp": stamp}}


def test_minion_back_before_timeout_still_gets_its_job(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(1)  # well before timeout: no sweep has queued it
    assert h.serve("beta").replayed == [JID]
    assert h.published == [("beta", JID, "cmd.run", 1)]
    assert h.tags("replayed") == [f"salt/job_retry/{JID}/replayed/beta"]


def test_swept_job_is_replayed_on_start_under_the_original_jid(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(6)
    assert [(j, m) for j, m, _ in h.replayer.sweep()] == [(JID, "beta")]
    assert h.tags("queued") == [f"salt/job_retry/{JID}/queued/beta"]
    assert h.store.pending(["beta"])["beta"][0]["jid"] == JID
    h.serve("beta")
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
        h.clock.advance(60)
        assert h.serve("alpha").replayed == []
    assert h.published == []


def test_replay_return_clears_the_queue(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    h.replayer.sweep()
    h.serve("beta")
    h.record(ret_event("beta", metadata={"job_retry": {"attempt": 1}}))
    assert h.store.pending(["beta"]) == {"beta": []}
    h.clock.advance(60)
    assert h.serve("beta").replayed == []


def test_two_engines_one_start_one_replay(make):
    first, second = make(), make()  # one fake Redis: two masters' engines
    first.record(new_event(minions=["beta"]))
    started = first.clock.now
    first.serve("beta", started)
    done = second.serve("beta", started)  # already published to this minion process
    assert done.replayed == [] and done.retry_at is None
    for h in (first, second):
        h.clock.advance(h.conf.claim_lease + 1)
    second.serve("beta", started)  # the duplicate start event, late
    first.serve("beta", started)
    assert len(first.published) + len(second.published) == 1


def test_engine_dying_between_claim_and_publish_is_retried_after_the_lease(make):
    crashed, survivor = make(), make()
    crashed.record(new_event(minions=["beta"]))
    started = crashed.clock.now
    crashed.publish_error = KeyboardInterrupt("engine killed")  # not caught: the process dies
    with contextlib.suppress(KeyboardInterrupt):
        crashed.serve("beta", started)
    assert survivor.serve("beta", started).retry_at == T0 + survivor.conf.claim_lease + 0.05
    survivor.clock.advance(survivor.conf.claim_lease + 1)
    assert survivor.serve("beta", started).replayed == [JID]
    assert survivor.published == [("beta", JID, "cmd.run", 2)]


def test_a_new_start_after_the_replay_replays_again(h):
    h.record(new_event(minions=["beta"]))
    h.serve("beta")
    h.clock.advance(h.conf.claim_lease + 1)  # the replay killed beta; it started again
    h.serve("beta")
    assert [p[3] for p in h.published] == [1, 2]


def test_job_that_kills_its_minion_stops_after_max_attempts(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    h.replayer.sweep()
    for _ in range(6):  # the minion dies during every replay and restarts
        h.serve("beta")
        h.clock.advance(h.conf.claim_lease + 1)
    assert [p[3] for p in h.published] == [1, 2, 3]
    assert h.tags("exhausted") == [f"salt/job_retry/{JID}/exhausted/beta"]
    assert h.store.pending(["beta"]) == {"beta": []}
    assert h.store.status(JID)["minions"]["beta"]["state"] == "exhausted"


def test_failed_publish_gives_the_attempt_back(h):
    h.record(new_event(minions=["beta"]))
    h.publish_error = RuntimeError("master said no")
    served = h.serve("beta")
    assert served.failed == [JID] and served.retry_at == T0 + 5
    h.publish_error = None
    h.serve("beta", T0)
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_owed_jobs_replay_oldest_first(h):
    h.record(new_event(minions=["beta"], when=T0 + 2), new_event(jid=OLDER, minions=["beta"], when=T0))
    h.clock.advance(10)
    h.replayer.sweep()
    h.serve("beta")
    assert [p[1] for p in h.published] == [OLDER, JID]


def test_expired_job_is_dropped_from_the_queue(h):
    h.record(new_event(minions=["beta"]))
    h.clock.advance(6)
    h.replayer.sweep()
    h.redis.delete(h.store.keys.job(JID))  # the ttl ran out
    assert h.serve("beta").replayed == []
    assert h.redis.zcard(h.store.keys.queue("beta")) == 0


def test_acked_minion_is_running_not_missing(h):
    h.record(new_event(minions=["alpha", "beta"]), ack_event("beta", when=T0 + 0.1), ret_event("alpha"))
    h.clock.advance(60)
    assert h.replayer.sweep() == []  # beta acknowledged: never queued
    state = h.store.status(JID)["minions"]["beta"]
    assert state["state"] == "delivered" and state["delivered_at"]
    assert h.serve("beta", T0).replayed == []  # a start older than the ack: still running


def test_acked_job_swept_before_the_restart_is_still_found(make):
    for policy, expected in ((False, "interrupted"), (True, "replayed")):
        h = make(replay_interrupted=policy, key_prefix=f"p{int(policy)}")
        h.record(new_event(minions=["beta"]), ack_event("beta", when=T0 + 0.1))
        h.clock.advance(60)
        assert h.replayer.sweep() == []  # not queued: it is running
        assert h.store.pending(["beta"]) == {"beta": []}
        served = h.serve("beta")  # ... then beta restarts, after the sweep
        assert getattr(served, expected) == [JID], (policy, served)


def test_restart_after_ack_is_interrupted_by_default(h):
    h.record(new_event(minions=["beta"]), ack_event("beta", when=T0 + 0.1))
    h.clock.advance(30)
    served = h.serve("beta")
    assert served.interrupted == [JID] and h.published == []
    assert h.tags("interrupted") == [f"salt/job_retry/{JID}/interrupted/beta"]
    assert h.store.status(JID)["minions"]["beta"]["state"] == "interrupted"


def test_replay_interrupted_policy(make):
    h = make(replay_interrupted=True)
    h.record(new_event(minions=["beta"]), ack_event("beta", when=T0 + 0.1))
    h.clock.advance(30)
    assert h.serve("beta").replayed == [JID]


def test_late_return_after_interrupted_wins(h):
    h.record(new_event(minions=["beta"]), ack_event("beta", when=T0 + 0.1))
    h.clock.advance(30)
    h.serve("beta")  # a reconnect (master restart) looked like a restart
    h.record(ret_event("beta"))
    assert h.store.status(JID)["minions"]["beta"]["state"] == "returned"


def test_replay_jid_new_links_the_fresh_jid(make):
    h = make(replay_jid="new")
    h.record(new_event(minions=["beta"]))
    h.serve("beta")
    (_minion, fresh, _, attempt), meta = h.published[0], h.publish_meta[0]
    assert fresh != JID and meta == {"orig_jid": JID} and attempt == 1
    h.record(new_event(jid=fresh, minions=["beta"]))  # not tracked as a job of its own
    assert h.store.job(fresh) is None
    h.record(ack_event("beta", jid=fresh, when=h.clock.now, metadata={"job_retry": {"orig_jid": JID}}))
    assert h.store.status(JID)["minions"]["beta"]["state"] == "delivered"
    h.record(ret_event("beta", jid=fresh, metadata={"job_retry": {"orig_jid": JID}}))
    assert h.store.status(JID)["minions"]["beta"]["state"] == "returned"


def test_rate_limit_defers_and_still_replays_everything(make):
    h = make(max_replays_per_second=10)  # bucket of 1 (100 ms worth), refilled at 10/s
    minions = [f"m{i:02d}" for i in range(25)]
    h.record(new_event(minions=minions))
    served = {m: h.serve(m, T0) for m in minions}
    assert len(h.published) == 1
    assert all(s.retry_at and s.retry_at > T0 for m, s in served.items() if s.deferred)
    stamps = []
    while len(h.published) < len(minions) and h.clock.now < T0 + 10:
        h.clock.advance(0.05)  # the engine polls every 50 ms while busy
        before = len(h.published)
        for m in minions:
            if served[m].deferred:
                served[m] = h.serve(m, T0)
        stamps += [h.clock.now] * (len(h.published) - before)
    assert sorted(p[0] for p in h.published) == minions  # each exactly once
    assert [p[3] for p in h.published] == [1] * 25  # deferring did not use up attempts
    assert sum(1 for t in stamps if t <= T0 + 1.0) <= 11  # ~rate per second


class Feed:
    def __init__(self, events):
        self.events = list(events)

    def __call__(self, wait):
        return self.events.pop(0) if self.events else None


def loop_for(h, events, interval=100.0, **kwargs):
    clock = [0.0]
    sleeps = []
    loop = EngineLoop(h.replayer, Feed(events), interval, clock=lambda: clock[0], sleep=sleeps.append, **kwargs)
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
    assert h.redis.zcard(h.store.keys.starts) == 0  # served and forgotten


def test_start_is_durable_and_served_by_another_engine(make):
    dead, alive = make(), make()
    dead.record(new_event(minions=["beta"]))
    loop, _, _ = loop_for(dead, [start("beta")])
    loop.unnoted["beta"] = int(T0 * 1000)
    dead.store.note_starts(loop.unnoted)  # the engine wrote the start, then died
    other, _, _ = loop_for(alive, [])
    other.step()
    assert alive.published == [("beta", JID, "cmd.run", 1)]


def test_presence_trigger_is_opt_in(make):
    presence = {"tag": "salt/presence/change", "data": {"new": ["beta"], "lost": []}}
    off, on = make(), make(replay_on_presence=True, key_prefix="on")
    for h in (off, on):
        h.record(new_event(minions=["beta"]))
        loop, _, _ = loop_for(h, [presence])
        loop.step()
    assert off.published == [] and on.published == [("beta", JID, "cmd.run", 1)]


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
    assert loop.backoff == 0 and not loop.unnoted


def test_loop_drains_the_spool_before_serving(h):
    h.server.connected = False
    h.record(new_event(minions=["beta"]))  # published during the outage: spooled
    h.server.connected = True
    loop, _, _ = loop_for(h, [start("beta")], recorder=h.recorder)
    loop.step()
    assert not h.recorder.spool.has_data()
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_loop_survives_unexpected_errors(h, caplog):
    loop, _, sleeps = loop_for(h, [start("beta")])
    h.replayer.serve = None  # any bug in the handler
    loop.step()
    assert sleeps == [1.0]
    assert "unexpected error" in caplog.text
