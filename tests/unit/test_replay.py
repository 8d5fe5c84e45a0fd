import datetime

import pytest
from conftest import JID, T0, new_event, ret_event
from salt_job_retry import recorder as recorder_module
from salt_job_retry import store as store_module
from salt_job_retry.replay import EngineLoop, Step, refusal_backoff_ms, supersede_key

OLDER = "20261122050816460001"
J1, J2, J3 = "20261122050816400001", "20261122050816400002", "20261122050816400003"
REFUSED = (
    'The function "state.apply" is running as PID 123 and was started at '
    "2026, Nov 22 05:08:16.467566 with jid 20261122050816467566"
)


def stamp(when):
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat()


def ack_event(minion, jid=JID, when=None, **extra):
    """salt/job/<jid>/start/<id> as a 3008 minion fires it (a _minion_event wrapping the job fields)."""
    inner = {"id": minion, "jid": jid, "fun": "cmd.run", "tgt": "beta", "tgt_type": "glob", "user": "root", **extra}
    tag = f"salt/job/{jid}/start/{minion}"
    return {
        "tag": tag,
        "data": {"id": minion, "cmd": "_minion_event", "data": inner, "tag": tag, "_stamp": stamp(when or T0)},
    }


def refusal_event(minion, jid=JID, fun="state.apply", orig=None):
    """The return of a state run Salt refused to start: another one was running."""
    extra = {"metadata": {"job_retry": {"orig_jid": orig, "attempt": 1}}} if orig else {}
    return ret_event(minion, jid=jid, fun=fun, retcode=1, success=False, **{"return": [REFUSED]}, **extra)


def replay_ret(minion, jid, orig=None, **extra):
    """The return of a replay (under the original jid, or a fresh one naming it)."""
    meta = {"attempt": 1, **({"orig_jid": orig} if orig else {})}
    return ret_event(minion, jid=jid, metadata={"job_retry": meta}, **extra)


def start_event(minion, pid=100, when=T0):
    """salt/minion/<id>/start; its data carries the minion's grains (pid) when it has them."""
    data = {"id": minion, "cmd": "_minion_event", "_stamp": stamp(when)}
    if pid is not None:
        data["grains"] = {"pid": pid}
    return {"tag": f"salt/minion/{minion}/start", "data": data}


def retry_field(h, jid, field, minion="beta"):
    value = h.redis.hget(h.store.keys.retry(jid), f"{field}:{minion}")
    return value.decode() if value is not None else None


def state(h, jid, minion="beta"):
    return h.store.status(jid)["minions"][minion]


def queue(h, minion="beta"):
    return [j.decode() for j in h.redis.zrange(h.store.keys.queue(minion), 0, -1)]


def owed_jobs(h, *jids, minions=("beta",), fun="cmd.run", arg=None, spacing=1.0):
    """Jobs published at T0, T0 + spacing, ... that nobody returned; swept, then the clock is past them."""
    h.record(*(new_event(jid=j, minions=minions, fun=fun, arg=arg, when=T0 + i * spacing) for i, j in enumerate(jids)))
    h.clock.advance(len(jids) * spacing + h.conf.timeout + 1)
    h.replayer.sweep()


# -- one at a time, oldest first ---------------------------------------------------------------


def test_missed_jobs_go_out_one_at_a_time_oldest_first(h):
    h.record(new_event(minions=["beta"], when=T0 + 2), new_event(jid=OLDER, minions=["beta"], when=T0))
    h.clock.advance(10)
    h.replayer.sweep()
    assert h.start("beta") == "new"
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 1)]
    assert h.last_step.published == OLDER and OLDER in h.last_step.waiting_for
    assert h.last_step.due_ms == h.now_ms() + h.conf.replay_wait * 1000
    assert h.store.sequence("beta")["cur"] == OLDER
    h.clock.advance(5)
    assert h.drive("beta") == []  # OLDER has not returned: JID waits behind it
    assert [(e["jid"], e["state"]) for e in h.store.pending(["beta"])["beta"]] == [
        (OLDER, "in_flight"),
        (JID, "pending"),
    ]
    h.record(replay_ret("beta", OLDER))
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]
    assert state(h, OLDER)["state"] == "returned" and state(h, JID)["state"] == "replayed"
    h.record(replay_ret("beta", JID))
    assert h.drive("beta") == [] and h.last_step == Step()  # nothing left: off the work set
    assert queue(h) == [] and h.store.sequence("beta").get("cur") is None
    assert [t for t, _ in h.events if "/replayed/" in t] == [
        f"salt/job_retry/{OLDER}/replayed/beta",
        f"salt/job_retry/{JID}/replayed/beta",
    ]


def test_next_job_goes_out_after_replay_wait_without_a_return(make):
    h = make(replay_wait=30)
    owed_jobs(h, OLDER, JID)
    h.start("beta")
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 1)]
    h.clock.advance(29)
    assert h.drive("beta") == []
    h.clock.advance(2)
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]  # OLDER is still running (no acks known)
    assert retry_field(h, OLDER, "a") == "1"  # and is not sent again
    assert state(h, OLDER)["state"] == "replayed"


def test_acking_minion_that_never_acked_the_replay_gets_it_again_after_replay_wait(make):
    h = make(replay_wait=30)
    owed_jobs(h, OLDER, JID)
    h.start("beta")
    h.drive("beta")
    h.store.seq_set("e1", "beta", acks="1")  # beta acknowledges replays (3008 start events)
    h.clock.advance(31)
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 2)]  # no ack: it never got there


def test_acked_replay_is_waited_for_then_the_next_goes_out(make):
    h = make(replay_wait=30)
    owed_jobs(h, OLDER, JID)
    h.start("beta")
    h.drive("beta")
    h.store.seq_set("e1", "beta", acks="1")
    h.record(ack_event("beta", jid=OLDER, when=h.clock.now, metadata={"job_retry": {"attempt": 1}}))
    assert h.drive("beta") == []
    h.clock.advance(31)
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]  # it runs: not sent twice
    assert state(h, OLDER)["state"] == "delivered"


def test_minion_back_before_timeout_still_gets_its_unswept_job(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(1)  # well before timeout: no sweep has queued it
    assert queue(h) == []
    h.start("beta")
    assert queue(h) == [JID]  # gathered from the unswept jobs
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]
    assert h.tags("replayed") == [f"salt/job_retry/{JID}/replayed/beta"]
    assert h.drive("alpha") == [] and h.published == [("beta", JID, "cmd.run", 1)]


def test_swept_job_is_replayed_under_the_original_jid(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(6)
    assert [(j, m) for j, m, _ in h.replayer.sweep()] == [(JID, "beta")]
    assert h.tags("queued") == [f"salt/job_retry/{JID}/queued/beta"]
    assert h.store.pending(["beta"])["beta"][0]["jid"] == JID
    h.start("beta")
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]
    assert h.publish_meta == [{}]


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


def test_job_published_after_the_process_started_is_not_replayed(h):
    h.start("beta", at=T0 - 1)
    h.record(new_event(minions=["beta"], when=T0))  # Salt delivered it to the running process
    h.clock.advance(6)
    h.replayer.sweep()  # no return yet (a long job): queued
    assert queue(h) == [JID]
    assert h.drive("beta") == [] and h.published == []
    assert retry_field(h, JID, "a") is None
    h.clock.advance(60)
    h.start("beta", pid="200")  # but a new process never got it
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]


def test_returned_minion_is_never_replayed(h):
    h.record(new_event(minions=["alpha"]), ret_event("alpha"))
    h.clock.advance(60)
    h.replayer.sweep()
    for pid in ("1", "2", "3"):
        h.clock.advance(60)
        h.start("alpha", pid=pid)
        assert h.drive("alpha") == []
    assert h.published == []


def test_return_of_the_original_publish_after_the_sweep_clears_the_queue(h):
    owed_jobs(h, JID)
    h.record(ret_event("beta"))  # slow, but it came
    h.start("beta")
    assert h.drive("beta") == [] and queue(h) == []


def test_expired_job_is_dropped_from_the_queue(h):
    owed_jobs(h, JID)
    h.redis.delete(h.store.keys.job(JID))  # the ttl ran out
    h.start("beta")
    assert h.drive("beta") == []
    assert queue(h) == []


def test_failed_publish_is_owed_again_and_keeps_its_attempt(h):
    owed_jobs(h, JID)
    h.start("beta")
    h.publish_error = RuntimeError("master said no")
    step = h.step("beta")
    assert step.due_ms == h.now_ms() + 5000 and not step.published
    # the attempt stays counted: a publish that raised may have gone out, and retries are bounded
    assert retry_field(h, JID, "a") == "1" and h.store.sequence("beta").get("cur") is None
    assert h.tags("replayed") == []
    h.publish_error = None
    h.clock.advance(5)
    assert h.drive("beta") == [("beta", JID, "cmd.run", 2)]


def test_publish_that_keeps_failing_stops_after_max_attempts(h):
    owed_jobs(h, JID)
    h.start("beta")
    h.publish_error = RuntimeError("timed out (the master may have published it)")
    for _ in range(10):
        h.drive("beta")
        h.clock.advance(5)
    assert state(h, JID)["state"] == "exhausted" and retry_field(h, JID, "a") == "3"


def test_job_that_kills_its_minion_stops_after_max_attempts(h):
    owed_jobs(h, JID)
    for pid in range(100, 106):  # the minion dies during every replay and comes back as a new process
        h.start("beta", pid=str(pid))
        h.drive("beta")
        h.clock.advance(h.conf.claim_lease + 1)
    assert [p[3] for p in h.published] == [1, 2, 3]
    assert h.tags("exhausted") == [f"salt/job_retry/{JID}/exhausted/beta"]
    assert h.store.pending(["beta"]) == {"beta": []}
    assert state(h, JID)["state"] == "exhausted"
    assert int(h.redis.hget(h.store.keys.stats, "exhausted")) == 1


def test_replay_jid_new_links_the_fresh_jid(make):
    h = make(replay_jid="new")
    h.record(new_event(minions=["beta"]))
    h.start("beta")
    assert len(h.drive("beta")) == 1
    (_minion, fresh, _, attempt), meta = h.published[0], h.publish_meta[0]
    assert fresh != JID and meta == {"orig_jid": JID} and attempt == 1
    assert set(h.last_step.waiting_for) == {JID, fresh}  # either return wakes the minion
    h.record(new_event(jid=fresh, minions=["beta"]))  # not tracked as a job of its own
    assert h.store.job(fresh) is None
    h.record(ack_event("beta", jid=fresh, when=h.clock.now, metadata={"job_retry": {"orig_jid": JID}}))
    assert state(h, JID)["state"] == "delivered"
    h.record(replay_ret("beta", fresh, orig=JID))
    assert state(h, JID)["state"] == "returned"


def test_owed_jobs_of_many_minions_are_independent(h):
    owed_jobs(h, OLDER, JID, minions=("alpha", "beta"))
    h.start("alpha")
    h.start("beta")
    assert h.drive("alpha") == [("alpha", OLDER, "cmd.run", 1)]
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 1)]
    h.record(replay_ret("beta", OLDER))
    assert h.drive("alpha") == [] and h.drive("beta") == [("beta", JID, "cmd.run", 1)]


# -- refusals: "a state run is already running" is not a return -----------------------------


def test_refusal_is_not_a_return_and_goes_out_again_under_a_fresh_jid_after_the_backoff(h):
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    assert h.drive("beta") == [("beta", JID, "state.apply", 1)]
    h.record(refusal_event("beta"))  # the replay met a running state run
    assert state(h, JID) == {**state(h, JID), "state": "refused", "attempts": 1, "refusals": 0}
    assert queue(h) == [JID]
    assert h.drive("beta") == []  # backing off
    assert h.last_step.due_ms == int(retry_field(h, JID, "t")) + refusal_backoff_ms(0)
    h.clock.advance(refusal_backoff_ms(0) / 1000)
    assert h.drive("beta") == [("beta", "20261122060000000001", "state.apply", 1)]  # attempts unchanged
    assert h.publish_meta[-1] == {"orig_jid": JID}  # a fresh jid: the minion dropped the original
    assert retry_field(h, JID, "a") == "1" and retry_field(h, JID, "c") == "1"
    replayed = [d for t, d in h.events if t == f"salt/job_retry/{JID}/replayed/beta"]
    assert replayed[-1]["after_refusal"] is True and replayed[-1]["replay_jid"] == "20261122060000000001"
    assert int(h.redis.hget(h.store.keys.stats, "refusals")) == 1
    h.record(replay_ret("beta", "20261122060000000001", orig=JID, fun="state.apply"))
    assert state(h, JID)["state"] == "returned"
    assert h.drive("beta") == [] and queue(h) == []


def test_refusals_back_off_and_stop_at_max_refusals(make):
    h = make(max_refusals=2)
    owed_jobs(h, JID, fun="state.highstate", arg=[])
    h.start("beta")
    h.drive("beta")
    sent = [JID]
    for _ in range(3):
        h.record(refusal_event("beta", jid=sent[-1], fun="state.highstate", orig=None if sent[-1] == JID else JID))
        hold = h.last_step.due_ms if h.drive("beta") == [] else None
        assert hold and hold > h.now_ms()
        h.clock.advance((hold - h.now_ms()) / 1000)
        out = h.drive("beta")
        sent += [p[1] for p in out]
    assert len(sent) == 3  # the original replay, then max_refusals more
    assert state(h, JID)["state"] == "exhausted" and state(h, JID)["attempts"] == 1
    assert h.tags("exhausted") == [f"salt/job_retry/{JID}/exhausted/beta"]
    assert queue(h) == []


def test_refusal_backoff_doubles_to_a_minute():
    assert [refusal_backoff_ms(n) for n in (0, 1, 2, 3, 5, 6, 30)] == [2000, 2000, 4000, 8000, 32000, 60000, 60000]


def test_refused_original_publish_waits_the_backoff_too(h):
    h.start("beta", at=T0 - 60)
    h.record(new_event(minions=["beta"], fun="state.apply", arg=[]))
    h.clock.advance(0.5)
    h.record(refusal_event("beta"))
    h.store.enqueue_refused("e1", [(JID, "beta")])  # what the engine does with the refusal event
    assert queue(h) == [JID] and state(h, JID)["state"] == "refused"
    assert h.drive("beta") == []  # not into the run that is still going
    h.clock.advance(2)
    assert h.drive("beta") == [("beta", "20261122060000000001", "state.apply", 0)]


def test_refusal_of_a_non_state_function_is_a_return(h):
    owed_jobs(h, JID)
    h.record(refusal_event("beta", fun="cmd.run"))
    assert state(h, JID)["state"] == "returned"


# -- supersede -------------------------------------------------------------------------------


@pytest.mark.parametrize("fun", ["state.apply", "state.highstate"])
def test_newest_argless_state_run_supersedes_older_owed_ones(h, fun):
    owed_jobs(h, J1, J2, J3, fun=fun, arg=[])
    h.start("beta")
    assert h.drive("beta") == [("beta", J3, fun, 1)]
    for old in (J1, J2):
        assert retry_field(h, old, "x") == "superseded" and retry_field(h, old, "s") == J3
        assert state(h, old) == {"state": "superseded", "attempts": 0, "superseded_by": J3}
    superseded = [(t, d) for t, d in h.events if "/superseded/" in t]
    assert [t for t, _ in superseded] == [f"salt/job_retry/{J}/superseded/beta" for J in (J1, J2)]
    assert all(d["by"] == J3 for _, d in superseded)
    assert int(h.redis.hget(h.store.keys.stats, "superseded")) == 2
    assert queue(h) == [J3]
    h.record(replay_ret("beta", J3, fun=fun))
    assert h.drive("beta") == [] and queue(h) == []


def test_jobs_with_args_are_not_superseded_by_default(h):
    owed_jobs(h, J1, J2, fun="state.apply", arg=["web"])
    h.start("beta")
    assert h.drive("beta") == [("beta", J1, "state.apply", 1)]
    h.record(replay_ret("beta", J1, fun="state.apply"))
    assert h.drive("beta") == [("beta", J2, "state.apply", 1)]
    assert h.tags("superseded") == []


def test_a_kwarg_counts_as_an_argument(h):
    owed_jobs(h, J1, J2, fun="state.apply", arg=[{"__kwarg__": True, "test": True}])
    h.start("beta")
    assert h.drive("beta") == [("beta", J1, "state.apply", 1)]


def test_sls_pattern_supersedes_identical_calls_only(make):
    h = make(supersede_functions=["state.sls(*)"])
    h.record(
        new_event(jid=J1, minions=["beta"], fun="state.sls", arg=["web"], when=T0),
        new_event(jid=J2, minions=["beta"], fun="state.sls", arg=["db"], when=T0 + 1),
        new_event(jid=J3, minions=["beta"], fun="state.sls", arg=["web"], when=T0 + 2),
        new_event(jid=OLDER, minions=["beta"], fun="state.apply", arg=[], when=T0 + 3),
    )
    h.record(new_event(jid=JID, minions=["beta"], fun="state.apply", arg=[], when=T0 + 4))
    h.clock.advance(10)
    h.start("beta")
    sent = []
    for _ in range(5):
        out = h.drive("beta")
        sent += [p[1] for p in out]
        for p in out:
            h.record(replay_ret("beta", p[1], fun=p[2]))
    assert sent == [J2, J3, OLDER, JID]  # state.apply is not in this list: both run
    assert state(h, J1)["superseded_by"] == J3


def test_supersede_can_be_turned_off(make):
    h = make(supersede_functions=[])
    owed_jobs(h, J1, J2, fun="state.apply", arg=[])
    h.start("beta")
    assert h.drive("beta") == [("beta", J1, "state.apply", 1)]
    assert h.tags("superseded") == []


def test_supersede_key():
    patterns = ("state.apply", "state.sls(*)")
    assert supersede_key({"fun": "state.apply", "arg": []}, patterns) is not None
    assert supersede_key({"fun": "state.apply", "arg": ["web"]}, patterns) is None
    web = supersede_key({"fun": "state.sls", "arg": ["web"]}, patterns)
    assert web == supersede_key({"fun": "state.sls", "arg": ["web"]}, patterns)
    assert web != supersede_key({"fun": "state.sls", "arg": ["db"]}, patterns)
    assert supersede_key({"fun": "state.sls", "arg": ["web"]}, ()) is None
    assert supersede_key({"fun": ["a", "b"], "arg": []}, ("*",)) is None
    assert supersede_key(None, patterns) is None


# -- which process: pid, not start events ------------------------------------------------------


@pytest.mark.parametrize("replay_jid", ["original", "new"])
def test_one_process_seen_by_two_engines_is_served_once(make, replay_jid):
    h = make(replay_jid=replay_jid)
    owed_jobs(h, JID)
    assert h.start("beta", engine="e1") == "new"
    assert len(h.drive("beta", engine="e1")) == 1
    assert h.store.note_starts("e2", {"beta": (h.now_ms(), "100")}) == {"beta": ["same-owned", "e1"]}
    assert h.step("beta", engine="e2") == Step(held_by="e1")
    h.clock.advance(h.conf.claim_lease + 1)  # even with e1's hold run out
    assert h.start("beta", engine="e2") == "same"
    assert h.drive("beta", engine="e2") == []
    assert h.drive("beta", engine="e1") == []
    assert len(h.published) == 1 and retry_field(h, JID, "a") == "1"
    assert h.tags("interrupted") == [] and state(h, JID)["state"] == "replayed"


def test_same_process_starting_again_replays_nothing_again(h):
    owed_jobs(h, JID)
    h.start("beta")
    h.drive("beta")
    h.clock.advance(60)
    assert h.start("beta") == "same"  # a master restart: every minion reconnects
    assert h.drive("beta") == [] and len(h.published) == 1


def test_new_process_gets_an_unacknowledged_replay_again(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta", pid="100")
    h.drive("beta")
    h.clock.advance(30)
    assert h.start("beta", pid="200") == "new"  # beta died (the replay killed it?) and came back
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 2)]
    assert h.tags("interrupted") == []


def test_new_process_after_an_acked_replay_marks_it_interrupted(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta", pid="100")
    h.drive("beta")
    h.record(ack_event("beta", jid=OLDER, when=h.clock.now, metadata={"job_retry": {"attempt": 1}}))
    h.clock.advance(30)
    assert h.start("beta", pid="200") == "new"
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]  # OLDER is not run again; the next goes out
    assert h.tags("interrupted") == [f"salt/job_retry/{OLDER}/interrupted/beta"]
    assert state(h, OLDER) == {**state(h, OLDER), "state": "interrupted", "attempts": 1}


def test_replay_interrupted_policy_sends_an_acked_replay_again(make):
    h = make(replay_interrupted=True)
    owed_jobs(h, JID)
    h.start("beta", pid="100")
    h.drive("beta")
    h.record(ack_event("beta", when=h.clock.now, metadata={"job_retry": {"attempt": 1}}))
    h.clock.advance(30)
    h.start("beta", pid="200")
    assert h.drive("beta") == [("beta", JID, "cmd.run", 2)]


def test_stale_start_is_ignored(h):
    owed_jobs(h, JID)
    h.start("beta", pid="100")
    h.drive("beta")
    assert h.start("beta", pid="50", at=h.clock.now - 20) == "stale"  # a late event of the previous process
    assert h.store.sequence("beta")["proc"] == "100"
    assert h.drive("beta") == [] and len(h.published) == 1


def test_acked_original_publish_is_running_not_missing(h):
    h.start("beta", at=T0 - 10)
    h.record(new_event(minions=["alpha", "beta"]), ack_event("beta", when=T0 + 0.1), ret_event("alpha"))
    h.clock.advance(60)
    assert h.replayer.sweep() == []  # beta acknowledged: never queued as missing
    assert state(h, JID)["state"] == "delivered" and state(h, JID)["delivered_at"]
    assert h.start("beta") == "same"  # a master restart, later than the publish
    assert h.drive("beta") == [] and h.published == []


@pytest.mark.parametrize("policy, published", [(False, 0), (True, 1)])
def test_restart_after_the_original_publish_was_acked(make, policy, published):
    h = make(replay_interrupted=policy)
    h.start("beta", at=T0 - 10)
    h.record(new_event(minions=["beta"]), ack_event("beta", when=T0 + 0.1))
    h.clock.advance(60)
    assert h.replayer.sweep() == []  # not queued: it is running
    assert h.store.pending(["beta"]) == {"beta": []}
    h.start("beta", pid="200")  # ... then beta restarts, after the sweep
    h.drive("beta")
    assert len(h.published) == published
    assert len(h.tags("interrupted")) == 1 - published
    assert state(h, JID)["state"] == ("replayed" if policy else "interrupted")


def test_late_return_after_interrupted_wins(h):
    h.start("beta", at=T0 - 10)
    h.record(new_event(minions=["beta"]), ack_event("beta", when=T0 + 0.1))
    h.clock.advance(30)
    h.start("beta", pid="200")
    h.drive("beta")
    h.record(ret_event("beta"))
    assert state(h, JID)["state"] == "returned"


def test_start_without_pid_asks_for_a_probe(h):
    owed_jobs(h, JID)
    assert h.start("beta", pid="") == "resolve"
    step = h.step("beta")
    assert step.probe and step.pend_ms == h.now_ms() and h.published == []
    assert queue(h) == [JID]
    h.start("beta", pid="100")  # the probe's answer, with the pending start's stamp
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]


# -- engines: crash, takeover, heartbeat ------------------------------------------------------


def test_engine_crash_mid_sequence_another_engine_continues_it(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta", engine="e1")
    assert h.drive("beta", engine="e1") == [("beta", OLDER, "cmd.run", 1)]
    assert h.step("beta", engine="e2") == Step(held_by="e1")  # e1 holds the sequence
    h.clock.advance(h.conf.claim_lease + 1)  # e1 stopped
    assert h.step("beta", engine="e2") == Step(held_by="e1")  # no proof beta is connected to e2
    assert h.store.note_starts("e2", {"beta": (0, "100")}) == {"beta": ["same"]}  # it answered e2's probe
    assert h.drive("beta", engine="e2") == []  # OLDER is in flight: waited for, not sent again
    assert h.store.sequence("beta")["owner"] == "e2" and h.store.sequence("beta")["cur"] == OLDER
    assert h.last_step.due_ms > h.now_ms() and OLDER in h.last_step.waiting_for
    h.record(replay_ret("beta", OLDER))
    assert h.drive("beta", engine="e2") == [("beta", JID, "cmd.run", 1)]
    h.clock.advance(h.conf.claim_lease + 1)
    assert h.drive("beta", engine="e1") == []  # back, too late: e2's replay is waited for
    assert [p[1] for p in h.published] == [OLDER, JID]


def test_engine_dying_between_claim_and_publish_is_sent_after_the_lease(h):
    owed_jobs(h, JID)
    h.start("beta", engine="e1")
    h.publish_error = KeyboardInterrupt("engine killed")  # not caught: the process dies
    with pytest.raises(KeyboardInterrupt):
        h.step("beta", engine="e1")
    h.publish_error = None
    assert h.step("beta", engine="e2") == Step(held_by="e1")
    h.clock.advance(h.conf.claim_lease + 1)
    h.store.note_starts("e2", {"beta": (0, "100")})  # beta answered e2's probe: connected to it
    assert h.drive("beta", engine="e2") == [("beta", JID, "cmd.run", 2)]
    assert h.drive("beta", engine="e2") == []


def test_silent_engine_is_found_and_its_minions_adopted(h):
    dead_after = int(h.conf.claim_lease * 3000)
    h.start("beta", engine="e1")
    h.start("gamma", engine="e1")
    h.start("delta", engine="e2")
    assert h.store.heartbeat("e1", dead_after) == []
    assert h.store.heartbeat("e2", dead_after) == []
    h.clock.advance(h.conf.claim_lease * 3 - 1)
    assert h.store.heartbeat("e2", dead_after) == []
    h.clock.advance(2)
    assert h.store.heartbeat("e2", dead_after) == ["e1"]
    assert sorted(h.store.adopt("e2", "e1")) == ["beta", "gamma"]
    active = {m.decode() for m in h.redis.zrange(h.store.keys.active("e2"), 0, -1)}
    assert active == {"beta", "gamma", "delta"}
    assert h.redis.zcard(h.store.keys.active("e1")) == 0
    assert h.store.heartbeat("e2", dead_after) == []  # e1 is forgotten
    assert h.store.adopt("e2", "e1") == []


# -- rate limit --------------------------------------------------------------------------------


def test_rate_limit_defers_and_still_replays_everything(make):
    h = make(max_replays_per_second=10)  # bucket of 1 (100 ms worth), refilled at 10/s
    minions = [f"m{i:02d}" for i in range(25)]
    h.record(new_event(minions=minions))
    h.clock.advance(1)
    h.store.note_starts("e1", {m: (h.now_ms(), "100") for m in minions})
    due = {m: h.step(m) for m in minions}
    assert len(h.published) == 1
    deferred = {m: s for m, s in due.items() if not s.published}
    assert len(deferred) == 24 and all(s.due_ms > h.now_ms() and not s.waiting_for for s in deferred.values())
    start, stamps = h.clock.now, []
    while len(h.published) < len(minions) and h.clock.now < start + 10:
        h.clock.advance(0.05)
        before = len(h.published)
        for m, s in list(due.items()):
            if not s.published and s.due_ms <= h.now_ms():
                due[m] = h.step(m)
        stamps += [h.clock.now] * (len(h.published) - before)
    assert sorted(p[0] for p in h.published) == minions  # each exactly once
    assert [p[3] for p in h.published] == [1] * 25  # deferring did not use up attempts
    assert sum(1 for t in stamps if t <= start + 1.0) <= 11  # ~rate per second
    for m in minions:
        assert h.drive(m) == []


# -- the engine loop ---------------------------------------------------------------------------


class Feed:
    def __init__(self, events):
        self.events = list(events)

    def __call__(self, wait):
        return self.events.pop(0) if self.events else None


def salt_stores(h, loop, event):
    """What Salt's store_job does with a minion's return: the bus event, then the job cache (us)."""
    loop.feed.events.append(event)
    h.record(event)


def loop_for(h, events, interval=100.0, engine="e1", **kwargs):
    clock = [0.0]
    sleeps = []
    feed = Feed(events)
    loop = EngineLoop(h.replayer_for(engine), feed, interval, clock=lambda: clock[0], sleep=sleeps.append, **kwargs)
    loop.feed = feed
    return loop, clock, sleeps


class Probe:
    def __init__(self, answers):
        self.answers = answers
        self.asked = []

    def __call__(self, minions, timeout):
        self.asked.append(sorted(minions))
        return {m: self.answers[m] for m in minions if m in self.answers}


def redis_calls(monkeypatch):
    """Count round trips to Redis made by the store and the recorder."""
    calls = []
    real = store_module.guard

    def counting(conf, call, *args):
        calls.append(getattr(call, "__name__", repr(call)))
        return real(conf, call, *args)

    monkeypatch.setattr(store_module, "guard", counting)
    monkeypatch.setattr(recorder_module, "guard", counting)
    return calls


def test_loop_notes_a_start_with_its_pid_and_serves_it(h):
    h.record(new_event(minions=["beta"]))
    probe = Probe({})
    loop, _, _ = loop_for(h, [start_event("beta", pid=4242, when=T0 + 1)], probe=probe)
    loop.step()
    assert h.published == [("beta", JID, "cmd.run", 1)]
    seq = h.store.sequence("beta")
    assert seq["proc"] == "4242" and seq["born"] == str(int((T0 + 1) * 1000)) and seq["owner"] == "e1"
    assert probe.asked == []
    assert loop.waiting == {"beta": (JID,)}


def test_loop_reacts_to_the_new_start_tag_only(h):
    h.record(new_event(minions=["beta"]))
    legacy = {"tag": "minion_start", "data": {"id": "beta", "grains": {"pid": 100}, "_stamp": stamp(T0)}}
    loop, _, _ = loop_for(h, [legacy])
    loop.step()
    assert h.published == []
    loop.feed.events.append(start_event("beta"))
    loop.step()
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_loop_probes_a_start_without_pid(h):
    h.record(new_event(minions=["beta"]))
    probe = Probe({"beta": "100"})
    loop, _, _ = loop_for(h, [start_event("beta", pid=None, when=T0 + 1)], probe=probe)
    loop.step()
    assert probe.asked == [["beta"]] and h.published == []
    loop.step()  # the answer woke it
    assert h.published == [("beta", JID, "cmd.run", 1)]
    seq = h.store.sequence("beta")
    assert seq["proc"] == "100" and seq["started"] == str(int((T0 + 1) * 1000)) and "pend" not in seq


def test_loop_gives_up_on_a_minion_that_does_not_answer_the_probe(h):
    h.record(new_event(minions=["beta"]))
    probe = Probe({})
    loop, clock, _ = loop_for(h, [start_event("beta", pid=None)], probe=probe)
    for i in range(1, 6):
        loop.step()
        clock[0] = i * 10.0
        h.clock.advance(10)
    assert probe.asked == [["beta"]] * EngineLoop.PROBE_TRIES
    assert h.published == [] and h.redis.zcard(h.store.keys.active("e1")) == 0


def test_loop_same_process_on_another_engine_is_not_served_twice(h):
    h.record(new_event(minions=["beta"]))
    loop1, _, _ = loop_for(h, [start_event("beta", pid=100, when=T0 + 1)], engine="e1")
    loop2, _, _ = loop_for(h, [start_event("beta", pid=100, when=T0 + 1)], engine="e2")
    loop1.step()
    loop2.step()
    assert h.published == [("beta", JID, "cmd.run", 1)]
    assert h.redis.zcard(h.store.keys.active("e2")) == 0


def test_loop_idle_events_cost_no_redis_call(h, monkeypatch):
    h.record(new_event(minions=["beta"]))
    unrelated = [
        ret_event("gamma", jid=OLDER),  # a plain return of a job nobody waits for
        {"tag": "salt/job/20261122050816400009/new", "data": {"jid": "x"}},
        {"tag": "salt/auth", "data": {"id": "beta", "act": "accept"}},
        {"tag": "minion_start", "data": {"id": "beta"}},
        {"tag": "salt/job_retry/x/replayed/beta", "data": {}},
        {"tag": "salt/presence/change", "data": {"new": ["beta"]}},  # replay_on_presence is off
        {"tag": f"salt/job/{OLDER}/start/gamma", "data": {"id": "gamma"}},
        {"tag": 5, "data": None},
        None,
    ]
    loop, _, _ = loop_for(h, [start_event("beta"), *unrelated])
    loop.step()  # the start: served
    calls = redis_calls(monkeypatch)
    for _ in unrelated:
        loop.step()
    assert calls == []
    loop.feed.events.append(refusal_event("beta"))  # a state run refused: that one is written
    loop.step()
    assert calls


def test_loop_wakes_the_minion_on_the_return_and_sends_the_next_in_the_same_pass(h, monkeypatch):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    loop, _, _ = loop_for(h, [start_event("beta", when=T0 + 2)], recorder=h.recorder)
    loop.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    loop.step()
    assert len(h.published) == 1  # OLDER is waited for
    salt_stores(h, loop, replay_ret("beta", OLDER))
    loop.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1), ("beta", JID, "cmd.run", 1)]
    assert state(h, OLDER)["state"] == "returned"


def test_loop_ack_of_the_replay_marks_the_minion_as_acknowledging(h):
    h.record(new_event(minions=["beta"]))
    loop, _, _ = loop_for(h, [start_event("beta", when=T0 + 1)], recorder=h.recorder)
    loop.step()
    loop.feed.events.append(ack_event("beta", when=T0 + 2, metadata={"job_retry": {"attempt": 1}}))
    loop.step()
    assert h.store.sequence("beta")["acks"] == "1"
    assert state(h, JID)["state"] == "delivered"


def test_loop_refusal_of_the_original_publish_is_sent_again(h):
    h.record(new_event(minions=["beta"], fun="state.apply", arg=[]))
    h.clock.advance(0.5)
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 - 60)], recorder=h.recorder)
    loop.step()  # beta is connected, nothing owed
    assert h.published == []
    salt_stores(h, loop, refusal_event("beta"))
    for i in range(1, 4):  # within a few seconds, whatever the backoff
        loop.step()
        clock[0] = i * 1.0
        h.clock.advance(1)
    assert h.published == [("beta", "20261122060000000001", "state.apply", 0)]
    assert h.publish_meta == [{"orig_jid": JID}]


def test_loop_refusal_of_the_replay_in_flight_is_sent_again_after_the_backoff(h):
    h.record(new_event(minions=["beta"], fun="state.apply", arg=[]))
    h.clock.advance(1)
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 1)], recorder=h.recorder)
    loop.step()
    assert h.published == [("beta", JID, "state.apply", 1)]
    salt_stores(h, loop, refusal_event("beta"))
    loop.step()
    assert len(h.published) == 1 and state(h, JID)["state"] == "refused"
    for i in range(1, 5):
        clock[0] = i * 0.5
        h.clock.advance(0.5)
        loop.step()
    assert h.published[1:] == [("beta", "20261122060000000001", "state.apply", 1)]


def test_loop_adopts_a_silent_engines_minions_after_asking_them(h):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    dead, _, _ = loop_for(h, [start_event("beta", when=T0 + 2)], engine="e1")
    dead.step()  # e1 replays OLDER, then its master goes away
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    h.record(replay_ret("beta", OLDER))
    probe = Probe({"beta": "100"})
    h.clock.advance(h.conf.claim_lease * 3 + 1)
    alive, clock, _ = loop_for(h, [], engine="e2", probe=probe)
    alive.step()
    assert probe.asked == [["beta"]]
    alive.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1), ("beta", JID, "cmd.run", 1)]
    assert h.store.sequence("beta")["owner"] == "e2"


def test_loop_adopted_minion_that_restarted_meanwhile_gets_its_lost_replay_again(h):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    dead, _, _ = loop_for(h, [start_event("beta", pid=100, when=T0 + 2)], engine="e1")
    dead.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    probe = Probe({"beta": "200"})  # beta restarted meanwhile; its start reached no live engine
    h.clock.advance(h.conf.claim_lease * 3 + 1)
    alive, clock, _ = loop_for(h, [], engine="e2", probe=probe)
    for i in range(1, 4):
        alive.step()
        clock[0] = i * 1.0
        h.clock.advance(1)
    assert probe.asked == [["beta"]]
    assert h.store.sequence("beta")["proc"] == "200"
    assert h.published[1:] == [("beta", OLDER, "cmd.run", 2)]


def test_presence_trigger_is_opt_in(make):
    presence = {"tag": "salt/presence/change", "data": {"new": ["beta"], "lost": [], "_stamp": stamp(T0 + 1)}}
    off, on = make(), make(replay_on_presence=True, key_prefix="on")
    for h in (off, on):
        h.record(new_event(minions=["beta"]))
        loop, _, _ = loop_for(h, [presence], probe=Probe({"beta": "100"}))
        loop.step()
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
    assert h.published == []  # queuing never publishes


def test_loop_survives_redis_outage_and_serves_the_start_later(h, caplog):
    h.record(new_event(minions=["beta"]))
    loop, clock, sleeps = loop_for(h, [start_event("beta", when=T0 + 1)])
    h.server.connected = False
    loop.step()  # start event while Redis is down: no exception, backoff
    loop.step()
    assert sleeps == [1.0, 2.0]
    assert "Redis unreachable" in caplog.text
    h.server.connected = True
    for i in range(1, 4):
        clock[0] = i * 1.0
        loop.step()
    assert loop.backoff == 0
    assert h.published == [("beta", JID, "cmd.run", 1)]
    assert not loop.starts


def test_loop_drains_the_spool_before_serving(h):
    h.server.connected = False
    h.record(new_event(minions=["beta"]))  # published during the outage: spooled
    h.server.connected = True
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 1)], recorder=h.recorder)
    for i in range(1, 4):
        loop.step()
        clock[0] = i * 1.0
    assert not h.recorder.spool.has_data()
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_loop_survives_unexpected_errors(h, caplog):
    loop, _, sleeps = loop_for(h, [start_event("beta")])
    h.replayer.step = None  # any bug in the handler
    loop.step()
    assert sleeps == [1.0]
    assert "unexpected error" in caplog.text


def test_loop_ack_then_return_of_a_fresh_jid_re_send_moves_the_sequence_on(h):
    # Found on real daemons: after the ack of the fresh-jid re-send, the engine waited only for
    # the original jid, so the re-send's return woke nothing and the next job waited replay_wait.
    h.record(new_event(jid=OLDER, minions=["beta"], fun="state.apply", arg=["one"], when=T0))
    h.record(new_event(minions=["beta"], fun="state.apply", arg=["two"], when=T0 + 0.5))
    h.clock.advance(1)
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 1)], recorder=h.recorder)
    loop.step()
    assert h.published == [("beta", OLDER, "state.apply", 1)]
    salt_stores(h, loop, refusal_event("beta", jid=OLDER))
    loop.step()
    for i in range(1, 6):  # the backoff passes: OLDER goes out again under a fresh jid
        clock[0] = i * 0.5
        h.clock.advance(0.5)
        loop.step()
    fresh = h.published[-1][1]
    assert fresh != OLDER and len(h.published) == 2
    loop.feed.events.append(ack_event("beta", jid=fresh, metadata={"job_retry": {"orig_jid": OLDER}}))
    loop.step()
    salt_stores(h, loop, replay_ret("beta", fresh, orig=OLDER, fun="state.apply"))
    loop.step()
    assert h.published[2:] == [("beta", JID, "state.apply", 1)]  # at once, not after replay_wait


def test_restarted_engine_moves_on_when_the_replay_in_flight_has_returned(h):
    """The process that knew what beta waited for died; its successor (same engine id) looks at once."""
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    loop, _, _ = loop_for(h, [start_event("beta", when=T0 + 2)], recorder=h.recorder)
    loop.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    h.record(replay_ret("beta", OLDER))  # written by the returner while no engine ran
    restarted, _, _ = loop_for(h, [])
    restarted.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1), ("beta", JID, "cmd.run", 1)]
    restarted.step()
    assert len(h.published) == 2


def test_replay_in_flight_is_looked_at_again_when_its_return_event_was_missed(h):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 2)], recorder=h.recorder)
    loop.step()
    due = h.redis.zscore(h.store.keys.active("e1"), "beta")
    assert due == h.now_ms() + EngineLoop.RECHECK_WAITING * 1000  # not replay_wait (300 s) away
    h.clock.advance(EngineLoop.RECHECK_WAITING - 1)
    clock[0] = EngineLoop.RECHECK_WAITING - 1
    loop.step()
    assert len(h.published) == 1 and "beta" in loop.waiting  # not due yet: still waiting
    h.record(replay_ret("beta", OLDER))  # the bus dropped this event; the returner wrote it
    h.clock.advance(EngineLoop.RECHECK_WAITING + 1)
    clock[0] += EngineLoop.RECHECK_WAITING + 1
    loop.step()
    assert h.published[-1] == ("beta", JID, "cmd.run", 1)


def startup_refusal(minion, blocking, jid="20261122050899000001"):
    """The return of the minion's own startup highstate, refused because `blocking` was running."""
    text = f'The function "state.apply" is running as PID 7 and was started at 2026, Nov 22 with jid {blocking}'
    return ret_event(minion, jid=jid, fun="state.highstate", fun_args=[], retcode=1, **{"return": [text]})


def replaying_a_state_run(h):
    """OLDER (state.apply) is owed to beta; beta starts and the loop replays it: (loop, clock)."""
    h.record(new_event(jid=OLDER, minions=["beta"], fun="state.apply", arg=[], when=T0))
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 2)], recorder=h.recorder)
    loop.step()
    return loop, clock


def startup_run_refused_for_a_while(h, loop, clock, own="20261122050899000001"):
    """beta's own startup highstate is refused by the replay; MINION_RUN_AFTER passes. Returns its jid."""
    loop.feed.events.append(startup_refusal("beta", OLDER, jid=own))
    loop.step()
    clock[0] += EngineLoop.MINION_RUN_AFTER + 1
    h.clock.advance(EngineLoop.MINION_RUN_AFTER + 1)
    return own


def test_loop_startup_run_refused_by_our_replay_is_owed_after_it(h):
    loop, clock = replaying_a_state_run(h)
    assert h.published == [("beta", OLDER, "state.apply", 1)]
    own = "20261122050899000001"
    loop.feed.events.append(startup_refusal("beta", OLDER, jid=own))
    loop.step()
    assert h.store.job(own) is None  # it may yet be a published job the returner is behind on
    clock[0] += EngineLoop.MINION_RUN_AFTER + 1
    h.clock.advance(EngineLoop.MINION_RUN_AFTER + 1)
    loop.step()
    assert h.store.job(own)["fun"] == "state.highstate" and state(h, own)["state"] == "refused"
    salt_stores(h, loop, replay_ret("beta", OLDER))
    loop.step()
    clock[0] += 5
    h.clock.advance(5)
    loop.step()
    loop.step()
    (resent,) = h.published[1:]
    assert resent[0] == "beta" and resent[2] == "state.highstate" and resent[1] != own  # a fresh jid
    assert h.publish_meta[-1]["orig_jid"] == own
    h.record(replay_ret("beta", resent[1], orig=own))
    assert state(h, own)["state"] == "returned"


def test_loop_minion_run_refused_by_something_else_is_left_alone(h):
    loop, clock = replaying_a_state_run(h)
    loop.feed.events.append(startup_refusal("beta", "20261122050877777777"))  # not our replay
    loop.step()
    clock[0] += EngineLoop.MINION_RUN_AFTER + 1
    loop.step()
    assert h.store.job("20261122050899000001") is None


def test_replay_announced_under_its_own_jid_is_not_swept_again(h, monkeypatch):
    owed_jobs(h, JID, minions=("alpha", "beta", "gamma"))
    h.start("beta")
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]
    h.record(new_event(minions=["beta"], when=h.clock.now))  # Salt's `new` for the replay
    swept = []
    real = h.store._sweep_jobs
    monkeypatch.setattr(h.store, "_sweep_jobs", lambda jids, now: swept.append(jids) or real(jids, now))
    h.clock.advance(h.conf.timeout + 1)
    assert h.replayer.sweep() == [] and swept == []
    assert h.store.stats()["unswept_jobs"] == 0 and h.store.status(JID)["swept"]


def test_loop_writes_a_burst_of_starts_in_one_pass(make, monkeypatch):
    """A master restart: many starts at once are noted together (one gather per pass, not per start)."""
    h = make(max_replays_per_second=100000)
    h.record(new_event(minions=[f"m{i}" for i in range(50)], when=T0))
    starts = [start_event(f"m{i}", pid=100 + i, when=T0 + 1) for i in range(50)]
    loop, _, _ = loop_for(h, starts, recorder=h.recorder)
    gathered = []
    real = h.store.gather_unswept
    monkeypatch.setattr(h.store, "gather_unswept", lambda minions: gathered.append(len(minions)) or real(minions))
    loop.step()
    assert gathered == [50]
    assert sorted(p[0] for p in h.published) == sorted(f"m{i}" for i in range(50))


def test_loop_minion_run_of_an_excluded_function_is_not_recorded(make):
    h = make(exclude_functions=["state.highstate"])
    loop, clock = replaying_a_state_run(h)
    own = startup_run_refused_for_a_while(h, loop, clock)
    loop.step()
    assert h.store.job(own) is None


def test_loop_minion_run_survives_a_redis_blip_while_it_is_recorded(h, monkeypatch):
    loop, clock = replaying_a_state_run(h)
    own = startup_run_refused_for_a_while(h, loop, clock)
    real = h.store.record_minion_run

    def blip(*args):
        raise store_module.RedisUnavailable("blip")

    monkeypatch.setattr(h.store, "record_minion_run", blip)
    loop.step()
    monkeypatch.setattr(h.store, "record_minion_run", real)
    clock[0] += 31  # the loop's backoff
    loop.step()
    assert h.store.job(own) is not None and state(h, own)["state"] == "refused"


def test_a_refused_run_re_sent_to_a_minion_that_never_gets_it_stops_at_max_refusals(make):
    h = make(replay_wait=30, max_attempts=3, max_refusals=4)
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    assert len(h.drive("beta")) == 1
    h.store.seq_set("e1", "beta", acks="1")  # beta acknowledges replays (3008 start events)
    h.record(refusal_event("beta"))  # refused; then beta freezes: no re-send ever reaches it
    for _ in range(40):  # 20 minutes of replay_wait periods
        h.clock.advance(31)
        h.drive("beta")
    assert len(h.published) <= 3 + 4  # every publish counted as an attempt or a refusal
    assert state(h, JID)["state"] == "exhausted"


MOVE = 5  # a failover move: the minion waits master_alive_interval before it leaves a master


# -- the sequence follows the process's newest connection ------------------------------------------


def test_failover_while_the_old_master_lives_moves_the_sequence_to_the_new_master(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta", engine="e1")
    assert h.drive("beta", engine="e1") == [("beta", OLDER, "cmd.run", 1)]
    h.clock.advance(MOVE)
    assert h.start("beta", engine="e2") == "same"  # same process, now connected to master 2
    h.record(replay_ret("beta", OLDER))
    assert h.step("beta", engine="e1") == Step(held_by="e2")  # e1's lease is live, but beta left it
    assert h.drive("beta", engine="e2") == [("beta", JID, "cmd.run", 1)]
    assert [p[1] for p in h.published] == [OLDER, JID] and len(h.replayers) == 2


def test_an_old_master_resumed_after_the_minion_moved_publishes_nothing(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta", engine="e1", at=T0)  # e1 serves beta, then is frozen (SIGSTOP)
    h.drive("beta", engine="e1")
    h.clock.advance(h.conf.claim_lease + 5)
    h.start("beta", engine="e2")  # beta fails over to master 2
    h.clock.advance(h.conf.claim_lease + 5)  # e2's lease runs out too; e1 resumes
    assert h.start("beta", engine="e1", at=T0 + 1) == "same-owned"  # its late-noted start does not win
    assert h.drive("beta", engine="e1") == []
    assert h.step("beta", engine="e1") == Step(held_by="e2")
    assert [p[0] for p in h.published] == ["beta"]  # only e1's first replay, before it was frozen


def test_failback_to_the_first_master_moves_the_sequence_back(h):
    owed_jobs(h, OLDER, JID, J1)
    h.start("beta", engine="e1")
    h.drive("beta", engine="e1")
    h.clock.advance(MOVE)
    h.start("beta", engine="e2")  # failover
    h.record(replay_ret("beta", OLDER))
    assert [p[1] for p in h.drive("beta", engine="e2")] == [JID]
    h.clock.advance(MOVE)
    assert h.start("beta", engine="e1") == "same"  # master_failback: back on master 1
    h.record(replay_ret("beta", JID))
    assert h.step("beta", engine="e2") == Step(held_by="e1")
    assert [p[1] for p in h.drive("beta", engine="e1")] == [J1]
    assert [p[1] for p in h.published] == [OLDER, JID, J1]


def test_pending_says_live_jobs_run_before_the_backlog_of_a_minion_being_replayed(h):
    owed_jobs(h, J1, J2, J3)
    assert all("live_jobs_run_first" not in e for e in h.store.pending(["beta"])["beta"])  # beta is down
    h.start("beta")
    h.drive("beta")
    first, *rest = h.store.pending(["beta"])["beta"]
    assert first["jid"] == J1 and first["state"] == "in_flight" and "live_jobs_run_first" not in first
    assert [(e["jid"], e["waiting_behind"], e["live_jobs_run_first"]) for e in rest] == [(J2, J1, True), (J3, J1, True)]


def test_a_replay_published_through_the_old_master_as_the_minion_moved_goes_again(h):
    # Found by the simulation (FINDINGS F2b, seed 291): e1 publishes in the instant between beta's
    # move to master 2 and e2 noting that start; beta never gets it.
    owed_jobs(h, OLDER, JID)
    h.start("beta", engine="e1")
    h.clock.advance(MOVE)
    moved_at = h.now_ms()  # beta connects to master 2 (failover), same process
    assert h.drive("beta", engine="e1") == [("beta", OLDER, "cmd.run", 1)]  # through master 1: lost
    assert h.store.note_starts("e2", {"beta": (moved_at, "100")}) == {"beta": ["same"]}
    assert h.drive("beta", engine="e2") == [("beta", OLDER, "cmd.run", 2)]  # again, the same jid
    h.record(replay_ret("beta", OLDER))
    assert h.drive("beta", engine="e2") == [("beta", JID, "cmd.run", 1)]


def test_a_replay_published_before_the_minion_moved_is_waited_for(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta", engine="e1")
    assert h.drive("beta", engine="e1") == [("beta", OLDER, "cmd.run", 1)]  # beta got it, then moved
    h.clock.advance(MOVE)
    assert h.store.note_starts("e2", {"beta": (h.now_ms(), "100")}) == {"beta": ["same"]}
    assert h.drive("beta", engine="e2") == []  # in flight: its return is waited for
    assert len(h.published) == 1


def test_the_same_connection_seen_through_the_other_master_a_moment_later_keeps_its_engine(h):
    # hot multi-master: beta connects to both masters at once; e1 noted it first and is publishing
    owed_jobs(h, OLDER, JID)
    h.start("beta", engine="e1")
    h.clock.advance(0.5)
    assert h.store.note_starts("e2", {"beta": (h.now_ms(), "100")}) == {"beta": ["same-owned", "e1"]}
    assert h.step("beta", engine="e2") == Step(held_by="e1")


# -- a start and a flush ask target membership only of jobs whose mask has their bucket -------------


def other_minions_in_other_buckets(n, of="beta"):
    from salt_job_retry.keys import bucket_of

    return [m for m in (f"other{i}" for i in range(10 * n)) if bucket_of(m) != bucket_of(of)][:n]


def test_a_start_reads_only_the_unswept_jobs_that_may_target_its_minion(h):
    others = other_minions_in_other_buckets(30)
    h.record(*[new_event(jid=f"2026112212{i:010d}", minions=[m]) for i, m in enumerate(others)])
    h.record(new_event(minions=["beta"]))
    assert [j for j, _ in h.store.unswept_for(["beta"])] == [JID]
    assert h.serve("beta").replayed == [JID]


def test_the_sweep_drops_a_jobs_mask(h):
    h.record(new_event(minions=["alpha", "beta"]))
    h.clock.advance(h.conf.timeout + 1)
    h.store.sweep()
    assert h.store.unswept_for(["alpha", "beta"]) == [] and not h.redis.hexists(h.store.keys.masks, JID)
    assert h.serve("beta").replayed == [JID]  # from its queue now


def test_a_broad_job_has_every_bucket_without_hashing_its_targets(h):
    from salt_job_retry.keys import ALL, ALL_BUCKETS_FROM, mask_of

    fleet = [f"web{i}" for i in range(ALL_BUCKETS_FROM)]
    assert mask_of(fleet) == ALL
    h.record(new_event(minions=fleet))
    assert [j for j, _ in h.store.unswept_for(["web7"])] == [JID]


def test_a_job_without_a_mask_may_target_anyone(h):
    h.record(new_event(minions=["alpha"]))
    h.redis.hdel(h.store.keys.masks, JID)  # recorded by 0.1
    assert [j for j, _ in h.store.unswept_for(["beta"])] == [JID]


def replayed_and_refused(h):
    """JID (a state run) is owed to beta, replayed once, and refused: another state run holds beta."""
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    h.drive("beta")
    h.record(refusal_event("beta"))


def test_a_late_ack_of_an_earlier_re_send_does_not_mark_the_current_one_delivered(h):
    # Found by the soak (FINDINGS F3, seed 6961).
    replayed_and_refused(h)
    h.clock.advance(3)
    first = h.drive("beta")[0][1]  # the re-send under a fresh jid
    h.record(refusal_event("beta", jid=first, orig=JID))
    h.clock.advance(5)
    second = h.drive("beta")[0][1]
    assert second != first
    h.record(ack_event("beta", jid=first, when=h.clock.now, metadata={"job_retry": {"orig_jid": JID}}))
    assert state(h, JID)["state"] != "delivered"
    h.record(ack_event("beta", jid=second, when=h.clock.now, metadata={"job_retry": {"orig_jid": JID}}))
    assert state(h, JID)["state"] == "delivered"
