"""
Regression tests for a cold review's delivery findings (f1 ... f11, flush, TTL).

The reviewer's reproductions asserted the bad behaviour; these assert the good one: the job
runs exactly once, is not lost, does not loop. A finding still open is marked
``xfail(strict=True, reason="OPEN: ...")`` so that fixing it turns the test red until the
marker goes.
"""

import pytest
import redis
from conftest import JID, T0, new_event, ret_event
from salt_job_retry import commands
from salt_job_retry.redis_io import RedisUnavailable
from salt_job_retry.replay import refusal_backoff_ms
from test_replay import (
    OLDER,
    Probe,
    loop_for,
    owed_jobs,
    queue,
    refusal_event,
    replay_ret,
    replayed_and_refused,
    retry_field,
    start_event,
    state,
)


def run_loops(h, loops, seconds, start=1):
    """Step every (loop, clock) once per simulated second, engine clocks and the store's in step."""
    for i in range(start, start + seconds):
        h.clock.advance(1)
        for loop, clock in loops:
            clock[0] = float(i)
            loop.step()


def published_after_refusal(h, orig=JID):
    """The re-sends of orig under a fresh jid: (jid, meta) in publish order."""
    return [(p[1], meta) for p, meta in zip(h.published, h.publish_meta, strict=True) if meta.get("orig_jid") == orig]


# -- f1 / f1b / f1c: a refusal re-send that may not have gone out goes again under a fresh jid --------


def test_f1_interrupted_refusal_resend_goes_again_under_a_fresh_jid(h, monkeypatch):
    # The re-send after a refusal is claimed, then Redis blips before it is published (the alias
    # write and the release both fail). The minion refused JID, so JID is in its jid_queue: the
    # next try must use a fresh jid, or the minion drops it and the state run never runs.
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    assert h.drive("beta") == [("beta", JID, "state.apply", 1)]
    h.record(refusal_event("beta"))
    h.clock.advance(refusal_backoff_ms(0) / 1000)
    real = h.store.register_alias

    def blip(*args):
        h.server.connected = False
        return real(*args)

    monkeypatch.setattr(h.store, "register_alias", blip)
    with pytest.raises(RedisUnavailable):
        h.step("beta")  # claimed (c=1), not published
    h.server.connected = True
    monkeypatch.setattr(h.store, "register_alias", real)
    assert len(h.published) == 1
    out = h.drive("beta")
    assert len(out) == 1 and out[0][1] != JID
    assert h.publish_meta[-1] == {"orig_jid": JID}
    # the claim that may have gone out counts too: every publish is bounded by max_refusals
    assert retry_field(h, JID, "c") == "2" and retry_field(h, JID, "j") == out[0][1]
    h.record(replay_ret("beta", out[0][1], orig=JID, fun="state.apply"))
    assert state(h, JID)["state"] == "returned"
    assert h.drive("beta") == [] and queue(h) == []


def test_f1b_unacked_refusal_resend_goes_again_under_a_fresh_jid(make):
    # An acking (3008) minion did not ack the fresh-jid re-send within replay_wait: sent again,
    # under that same fresh jid (not the original, which the minion would drop; not another
    # fresh one, which would run twice if the first did arrive after all).
    h = make(replay_wait=30)
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    h.drive("beta")
    h.store.seq_set("e1", "beta", acks="1")
    h.record(refusal_event("beta"))
    h.clock.advance(2)
    first = h.drive("beta")
    assert len(first) == 1 and first[0][1] != JID
    h.clock.advance(31)  # the re-send was lost: never acked
    second = h.drive("beta")
    assert len(second) == 1 and second[0][1] == first[0][1] != JID
    assert h.publish_meta[-1] == {"orig_jid": JID}
    assert retry_field(h, JID, "j") == second[0][1]


def test_f1c_claim_run_twice_by_a_client_retry_still_goes_out_under_a_fresh_jid(h, monkeypatch):
    # redis-py re-sent the claim's EVALSHA after its reply timed out: the first run claimed, the
    # second answers 'sent', the step gives up. The next step sends it under a fresh jid.
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    h.drive("beta")
    h.record(refusal_event("beta"))
    h.clock.advance(2)
    real = h.store.claim

    def claim_twice(*args, **kwargs):
        real(*args, **kwargs)  # ran in Redis, its reply lost
        return real(*args, **kwargs)  # what the engine sees

    monkeypatch.setattr(h.store, "claim", claim_twice)
    assert h.step("beta").published == ""
    monkeypatch.setattr(h.store, "claim", real)
    out = h.drive("beta")
    assert len(out) == 1 and out[0][1] != JID
    assert h.publish_meta[-1] == {"orig_jid": JID}
    assert len(h.published) == 2


# -- f2 / f3 / f2b: the engine acts before the returner wrote the job ------------------------------


def test_f2_refusal_seen_before_new_is_written_is_sent_again(h):
    h.start("beta", at=T0 - 60)  # connected, busy with a state run
    loop, clock, _ = loop_for(h, [refusal_event("beta")], recorder=h.recorder, interval=5)
    loop.step()  # the engine handles the refusal; the job's `new` is not in Redis yet
    h.record(new_event(minions=["beta"], fun="state.apply", arg=[]), refusal_event("beta"))  # the returner, late
    assert state(h, JID)["state"] == "refused"
    run_loops(h, [(loop, clock)], 30)
    resent = published_after_refusal(h)
    assert len(h.published) == 1 and len(resent) == 1 and resent[0][0] != JID
    assert not loop.refused
    loop.feed.events.append(replay_ret("beta", resent[0][0], orig=JID, fun="state.apply"))
    h.record(loop.feed.events[-1])  # Salt's store_job: the bus event, then the job cache
    run_loops(h, [(loop, clock)], 60, start=31)
    assert len(h.published) == 1 and state(h, JID)["state"] == "returned" and queue(h) == []


def test_f2b_refusal_only_the_returner_recorded_is_sent_again(h):
    # The engine never saw the refusal (it was restarting): the sweep queues the pair and wakes
    # the engine serving beta.
    h.start("beta", at=T0 - 60)
    h.record(new_event(minions=["beta"], fun="state.apply", arg=[]))
    h.record(refusal_event("beta"))
    loop, clock, _ = loop_for(h, [], recorder=h.recorder, interval=5)
    run_loops(h, [(loop, clock)], 60)
    resent = published_after_refusal(h)
    assert len(h.published) == 1 and len(resent) == 1 and resent[0][0] != JID
    assert h.published[0][3] == 0  # a re-send of the original publish, not a replay attempt


def test_f3_start_served_before_new_is_written_the_sweep_replays_it(h):
    # beta connected at T0 + 1 and missed a job published at T0 whose `new` the returner had not
    # written when the start was served: the sweep queues it and wakes beta's engine.
    loop, clock, _ = loop_for(h, [start_event("beta", pid=100, when=T0 + 1)], recorder=h.recorder, interval=5)
    loop.step()  # nothing known yet
    assert h.published == []
    h.record(new_event(minions=["beta"], when=T0))
    run_loops(h, [(loop, clock)], 60)
    assert h.published == [("beta", JID, "cmd.run", 1)]


# -- f5: `retry` and the engine must not both deliver ----------------------------------------------


def test_f5_retry_to_an_idle_minion_is_not_replayed_by_the_engine_too(h):
    owed_jobs(h, OLDER, JID)
    h.start("beta")
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 1)]
    env = commands.Env({}, h.conf, h.store)
    env.publish, env.fire = h.publish, h.fire
    env.new_jid = lambda: "20261122069999999999"
    env.probe = lambda minions, jid, timeout: ({"beta"}, set())  # idle: not running JID
    res = commands.retry(env, JID)
    assert res["published"] == ["beta"]
    h.record(replay_ret("beta", OLDER))
    assert h.drive("beta") == []  # JID went out with the retry: not again
    h.clock.advance(h.conf.replay_wait + 1)
    assert h.drive("beta") == []
    assert [p[1] for p in h.published] == [OLDER, "20261122069999999999"]
    h.record(replay_ret("beta", "20261122069999999999", orig=JID))
    assert state(h, JID)["state"] == "returned"
    assert h.drive("beta") == [] and queue(h) == []


# -- f4: a late copy of an old refusal must not mark the newer re-send refused ----------------------


def test_f4_late_duplicate_refusal_does_not_mark_the_resend_refused(h):
    owed_jobs(h, JID, fun="state.apply", arg=[])
    h.start("beta")
    h.drive("beta")
    ev = refusal_event("beta")
    h.record(ev)  # the engine's copy
    h.clock.advance(2)
    first = h.drive("beta")
    assert len(first) == 1 and first[0][1] != JID
    h.record(ev)  # the returner's batched copy of the same event
    assert state(h, JID)["state"] == "replayed"
    h.clock.advance(5)
    assert h.drive("beta") == []  # the re-send is in flight: no second state run
    assert retry_field(h, JID, "c") == "1"
    h.record(refusal_event("beta", jid=first[0][1], orig=JID))  # but a refusal of the re-send counts
    assert state(h, JID)["state"] == "refused"


# -- f7 / f11: the engine that does not hold the sequence --------------------------------------------


def test_f7_refusal_at_the_non_owner_engine_wakes_the_owner(h):
    l1, c1, _ = loop_for(h, [start_event("beta", pid=100, when=T0 - 5)], engine="e1", recorder=h.recorder, interval=5)
    l1.step()  # e1 served beta's start: it holds the sequence, beta is off its work set
    assert h.store.sequence("beta")["owner"] == "e1" and h.redis.zcard(h.store.keys.active("e1")) == 0
    h.record(new_event(minions=["beta"], fun="state.apply", arg=[]))  # published via master 2, beta busy
    l2, c2, _ = loop_for(h, [refusal_event("beta")], engine="e2", recorder=h.recorder, interval=5)
    h.record(refusal_event("beta"))  # master 2's store_job: the bus event, then the job cache
    l2.step()
    run_loops(h, [(l1, c1), (l2, c2)], 60)
    resent = published_after_refusal(h)
    assert len(h.published) == 1 and len(resent) == 1 and resent[0][0] != JID
    assert state(h, JID)["state"] == "replayed"


def test_f11_pidless_start_at_the_non_owner_engine_is_identified_and_served(h):
    # Failover without start_event_grains: the restarted minion's start reaches e2 while e1's
    # lease is live. e2 takes the sequence (pend_by), asks the minion and serves the new process.
    l1, c1, _ = loop_for(h, [start_event("beta", pid=100, when=T0 - 5)], engine="e1", probe=Probe({}), interval=5)
    l1.step()
    h.record(new_event(minions=["beta"], when=T0))  # beta down (restarting): missed it
    h.clock.advance(1)
    p2 = Probe({"beta": "200"})
    l2, c2, _ = loop_for(h, [start_event("beta", pid=None, when=T0 + 1)], engine="e2", probe=p2, interval=5)
    l2.step()
    run_loops(h, [(l1, c1), (l2, c2)], 60)
    assert h.published == [("beta", JID, "cmd.run", 1)]
    assert p2.asked == [["beta"]]
    seq = h.store.sequence("beta")
    assert seq["proc"] == "200" and "pend" not in seq


# -- f6: replay_jid new, Redis blip between the publish and seq_set(pub) ----------------------------


def test_f6_blip_after_a_fresh_jid_publish_does_not_publish_it_twice(make):
    h = make(replay_jid="new")
    owed_jobs(h, JID)
    h.start("beta")
    real = h.publish

    def publish_then_blip(*args, **kwargs):
        real(*args, **kwargs)
        h.server.connected = False

    h.replayer.publish = publish_then_blip
    with pytest.raises(RedisUnavailable):
        h.step("beta")  # published, seq_set(pub) failed
    h.server.connected = True
    h.replayer.publish = real
    h.drive("beta")
    # the same jid again would be harmless (the minion drops a jid it has); a second fresh one runs
    assert len({p[1] for p in h.published}) == 1


# -- f10: a publish that raised after the master accepted it ----------------------------------------


def refused_then_publishes_raise_after_sending(h):
    """JID's replay was refused; from now on every publish goes out, then raises (reply lost)."""
    replayed_and_refused(h)
    h.clock.advance(2)
    real = h.publish

    def sent_then_raise(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("SaltReqTimeoutError: reply lost")

    h.replayer.publish = sent_then_raise


def test_f10_publish_raising_after_send_is_bounded(h):
    refused_then_publishes_raise_after_sending(h)
    for _ in range(120):
        h.drive("beta")
        h.clock.advance(60)
    assert len(h.published) - 1 == h.conf.max_refusals  # stops: no endless loop
    assert state(h, JID)["state"] == "exhausted" and queue(h) == []
    assert h.tags("exhausted") == [f"salt/job_retry/{JID}/exhausted/beta"]


def test_f10b_publish_raising_after_send_reuses_its_fresh_jid(h):
    refused_then_publishes_raise_after_sending(h)
    for _ in range(5):
        h.drive("beta")
        h.clock.advance(60)
    # the master may have published each: one jid for all of them lets the minion drop the copies
    assert len({p[1] for p in h.published[1:]}) == 1


# -- f9: only the first 50 queue entries are looked at ------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="OPEN: take() peeks 50 queue entries and 'sent' entries stay queued until they return (README limit)",
)
def test_f9_jobs_behind_50_unreturned_ones_are_replayed(make):
    h = make(replay_wait=1, supersede_functions=[])
    jids = [f"2026112205081640{i:04d}" for i in range(52)]
    owed_jobs(h, *jids, spacing=0.01)
    h.start("beta")
    sent = []
    for _ in range(60):
        sent += [p[1] for p in h.drive("beta")]
        h.clock.advance(1.1)
    assert sent == jids


# -- flush of the replay in flight ---------------------------------------------------------------------


def test_flush_of_the_replay_in_flight_keeps_the_next_job_waiting(make):
    h = make(replay_wait=30)
    owed_jobs(h, OLDER, JID)
    h.start("beta")
    assert h.drive("beta") == [("beta", OLDER, "cmd.run", 1)]
    assert h.store.flush("beta", [OLDER]) == [OLDER]
    assert h.drive("beta") == []  # OLDER went out and is still running: one at a time
    h.clock.advance(31)
    assert h.drive("beta") == [("beta", JID, "cmd.run", 1)]


# -- TTL of the sequence key -------------------------------------------------------------------------


@pytest.mark.parametrize("pid", ["100", ""])
def test_note_start_gives_a_new_sequence_key_its_ttl(h, pid):
    h.start("beta", pid=pid)
    ttl = h.redis.ttl(h.store.keys.seq("beta"))
    assert 0 < ttl <= h.conf.ttl


# -- second review (engine restart, 30 s re-check) ---------------------------------------------------


def test_r1_recheck_of_a_replay_in_flight_looks_at_that_job_only(h, monkeypatch):
    jids = [f"2026112205081640{i:04d}" for i in range(20)]
    owed_jobs(h, *jids)
    h.start("beta")
    assert [p[1] for p in h.drive("beta")] == [jids[0]]
    looked = []
    real = h.store.look
    monkeypatch.setattr(h.store, "look", lambda m, view, **kw: looked.append(real(m, view, **kw)) or looked[-1])
    h.clock.advance(30)
    assert h.drive("beta") == []
    assert [len(found) for found in looked] == [1]  # not 20
    h.record(replay_ret("beta", jids[0]))
    assert [p[1] for p in h.drive("beta")] == [jids[1]]


def test_r2_minion_that_does_not_answer_the_adopter_goes_back_to_its_engine(h):
    """e1 went silent mid-sequence; e2 adopted beta, which is connected to e1's master only."""
    owed_jobs(h, OLDER, JID)  # swept already: no later sweep wakes anyone
    first, clock1, _ = loop_for(h, [start_event("beta", when=h.clock.now)], engine="e1")
    first.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    h.clock.advance(h.conf.claim_lease * 3 + 1)
    adopter, clock2, _ = loop_for(h, [], engine="e2", probe=Probe({}))
    for i in range(1, 20):  # e2 asks three times, gets no answer
        clock2[0] = i * 10.0
        h.clock.advance(5)
        adopter.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    h.record(replay_ret("beta", OLDER))  # returned to e1's master while e1 was away
    restarted, _, _ = loop_for(h, [], engine="e1")  # Salt restarts e1 under the same id
    restarted.step()
    assert h.published[-1] == ("beta", JID, "cmd.run", 1)


def test_r3_restarted_adopter_asks_before_publishing(h):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    first, _, _ = loop_for(h, [start_event("beta", when=T0 + 2)], engine="e1")
    first.step()
    h.record(replay_ret("beta", OLDER))
    h.clock.advance(h.conf.claim_lease * 3 + 1)
    adopter, _, _ = loop_for(h, [], engine="e2", probe=Probe({}))
    adopter._heartbeat(0.0)  # adopts beta, then the process dies before asking it
    assert h.redis.zscore(h.store.keys.active("e2"), "beta") is not None
    probe = Probe({})
    restarted, _, _ = loop_for(h, [], engine="e2", probe=probe)
    restarted.step()
    assert probe.asked == [["beta"]] and len(h.published) == 1  # asked, not published blind


def test_r4_rewind_moves_a_large_work_set_in_chunks(h):
    members = {f"m{i}": 10**13 for i in range(2500)}
    h.redis.zadd(h.store.keys.active("e1"), members)
    moved = h.store.rewind("e1", chunk=1000)
    assert sorted(moved) == sorted(members)
    assert h.redis.zcount(h.store.keys.active("e1"), "-inf", h.now_ms()) == 2500


def test_r5_a_backlog_step_looks_at_a_window_not_the_whole_queue(make, monkeypatch):
    h = make(max_replays_per_second=100000)
    jids = [f"2026112205081640{i:04d}" for i in range(40)]
    owed_jobs(h, *jids)  # cmd.run with arguments: never superseded
    h.start("beta")
    looked = []
    real = h.store.look
    monkeypatch.setattr(h.store, "look", lambda m, view, **kw: looked.append(real(m, view, **kw)) or looked[-1])
    sent = []
    for jid in jids:
        sent += [p[1] for p in h.drive("beta")]
        h.record(replay_ret("beta", jid))
    assert sent == jids  # every one, in order
    assert max(len(found) for found in looked) <= 4


# -- fourth review (windowed look) ---------------------------------------------------------------

R4_A, R4_B = "20261122050816300001", "20261122050816300002"
R4_Y = "20261122050816900001"
R4_DS = [f"2026112205081650{i:04d}" for i in range(60)]


def test_r6_done_entries_beyond_the_window_hide_a_later_job(make):
    """
    A busy minion: a state.apply replay (A) runs; meanwhile 60 cmd.run jobs it gets late are
    swept ('after'), then return (done); a state.sls published meanwhile is refused (A runs).
    Y must still go out after B.
    """
    h = make(max_replays_per_second=100000, replay_wait=600)
    h.record(
        new_event(jid=R4_A, minions=["beta"], fun="state.apply", arg=[], when=T0),
        new_event(jid=R4_B, minions=["beta"], when=T0 + 0.5),
    )
    h.clock.advance(1)
    h.start("beta", pid="100")  # T0+1: gathers A and B
    assert h.drive("beta") == [("beta", R4_A, "state.apply", 1)]
    h.record(*(new_event(jid=d, minions=["beta"], when=T0 + 2 + i * 0.01) for i, d in enumerate(R4_DS)))
    h.record(new_event(jid=R4_Y, minions=["beta"], fun="state.sls", arg=["web"], when=T0 + 3))
    h.clock.advance(2.5)
    h.record(refusal_event("beta", jid=R4_Y, fun="state.sls"))  # A (a state run) is running
    h.store.enqueue_refused("e1", [(R4_Y, "beta")])
    h.clock.advance(10)
    h.replayer.sweep()  # the 60 late cmd.run jobs: queued, 'after'
    assert len(queue(h)) == 63
    h.record(*(ret_event("beta", jid=d) for d in R4_DS))  # they come back late: done
    h.record(replay_ret("beta", R4_A, fun="state.apply"))
    assert [p[1] for p in h.drive("beta")] == [R4_B]
    h.record(replay_ret("beta", R4_B))
    out = h.drive("beta")
    assert [p[2] for p in out] == ["state.sls"], (out, h.last_step, queue(h)[:3], len(queue(h)))


def test_r7_again_with_newer_identical_job_beyond_the_window(make):
    """
    The replay in flight C (state.apply) was claimed but its engine died before publishing it;
    a newer identical state.apply C2 is owed too, beyond the first window, behind an owed cmd.run X.
    Supersede: C is superseded by C2 (only the newest identical one runs).
    """
    h = make(max_replays_per_second=100000)
    C, X, P1, P2, P3, C2 = (f"2026112205081640000{i}" for i in range(1, 7))
    h.record(
        new_event(jid=C, minions=["beta"], fun="state.apply", arg=[], when=T0),
        new_event(jid=X, minions=["beta"], when=T0 + 1),
        new_event(jid=P1, minions=["beta"], when=T0 + 2),
        new_event(jid=P2, minions=["beta"], when=T0 + 3),
        new_event(jid=P3, minions=["beta"], when=T0 + 4),
    )
    h.clock.advance(5)
    h.start("beta", pid="100")
    # the dead engine's claim of C: claimed, cur=C, never published (pub unset)
    view = h.store.take("e1", "beta")
    assert h.store.seq_set("e1", "beta", cur=C, pub="", wait="+300000")
    assert h.store.claim("beta", view, C, T0, "claim").state == "claimed"
    # the newer identical one, known late (the returner was behind): owed to the process too
    h.record(new_event(jid=C2, minions=["beta"], fun="state.apply", arg=[], when=T0 + 4.5))
    h.store.gather_unswept(["beta"])
    assert queue(h) == [C, X, P1, P2, P3, C2]
    out = h.drive("beta")
    assert C not in [p[1] for p in out], (out, queue(h))


# -- fifth review (a return moves the minion from targets to returned) -------------------------------


def _fail_the_noscript_resend(h, monkeypatch):
    """Redis lost its script cache (failover) and the connection drops before the re-send."""
    batch_cls = type(h.store.batch())
    real, calls = batch_cls._send, []

    def send(self, ops):
        calls.append(len(ops))
        if len(calls) == 2:
            raise redis.exceptions.ConnectionError("connection lost during failover")
        return real(self, ops)

    monkeypatch.setattr(batch_cls, "_send", send)
    h.redis.script_flush()


def test_r8_a_failed_script_resend_does_not_leave_targets_without_ttl(h, monkeypatch):
    _fail_the_noscript_resend(h, monkeypatch)
    h.record(new_event(minions=["alpha", "beta"]))  # spooled: RedisUnavailable on the re-send
    k = h.store.keys
    assert h.redis.exists(k.targets(JID)) and not h.redis.exists(k.job(JID))
    assert h.redis.ttl(k.targets(JID)) > 0  # its EXPIRE went with the SADD, not with the script


def test_r9_pairs_in_both_sets_from_the_old_schema_are_not_owed(h):
    # written by the parent commit: a returned minion stays in targets
    h.record(new_event(minions=["alpha", "beta"]))
    k = h.store.keys
    h.redis.sadd(k.returned(JID), "alpha")
    h.redis.expire(k.returned(JID), h.conf.ttl)
    h.clock.advance(10)
    assert [m for _, m, _ in h.store.sweep()] == ["beta"]
    assert h.store.missing(JID) == ["beta"]
    assert h.store.status(JID)["minions"]["alpha"]["state"] == "returned"
    assert h.serve("alpha").replayed == [] and h.serve("beta").replayed == [JID]
    h.record(ret_event("alpha"))  # a late duplicate: moves it out of targets
    assert h.redis.smembers(k.targets(JID)) == {b"beta"}


def test_r10_a_job_whose_targets_all_returned_owes_nothing_to_a_late_announcement(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"), ret_event("beta"))
    k = h.store.keys
    assert not h.redis.exists(k.targets(JID))
    h.record(new_event(minions=["beta"], when=T0 + 1))  # a late replay `new`: back in targets, returned
    h.clock.advance(10)
    assert h.store.sweep() == [] and h.store.missing(JID) == []
    assert h.store.flush("beta", [JID]) == []
    env = commands.Env({}, h.conf, h.store)
    env.publish, env.fire, env.probe = h.publish, h.fire, lambda m, j, t: (set(m), set())
    assert commands.retry(env, JID)["published"] == []
    assert h.serve("beta").replayed == [] and h.published == []


def test_r11_a_retry_fresh_jid_return_moves_the_original_pair(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    h.clock.advance(10)
    env = commands.Env({}, h.conf, h.store)
    env.publish, env.fire = h.publish, h.fire
    env.new_jid = lambda: "20261122060000000077"
    env.probe = lambda m, j, t: (set(m), set())
    assert commands.retry(env, JID)["published"] == ["beta"]
    fresh = "20261122060000000077"
    meta = {"job_retry": {"attempt": 0, "orig_jid": JID}}
    h.record(new_event(jid=fresh, minions=["beta"], when=h.clock.now, metadata=meta))
    h.record(ret_event("beta", jid=fresh, metadata=meta))
    k = h.store.keys
    assert h.redis.smembers(k.returned(JID)) == {b"alpha", b"beta"} and not h.redis.exists(k.targets(JID))
    assert 0 < h.redis.ttl(k.targets(fresh)) <= h.conf.ttl
    assert h.redis.zscore(k.unswept, fresh) is None
    h.clock.advance(10)
    assert h.store.sweep() == [] and h.serve("beta").replayed == []


# -- sixth review (queue indexing, config) ---------------------------------------------------------

J2 = "20261122060000000002"


def test_r15_an_infinite_rate_is_a_config_error():
    from salt_job_retry import config

    for bad in (float("inf"), float("nan")):
        with pytest.raises(config.ConfigError, match="max_replays_per_second"):
            config.load({"enabled": True, "max_replays_per_second": bad})


def test_r17_pending_relisting_a_minion_keeps_the_queues_ttl(h, monkeypatch):
    owed_jobs(h, JID)  # beta queued, `queues` = {beta} with a TTL
    real = h.store.look

    def look_and_sweep_meanwhile(minion, view, **kw):  # a sweep queues J2 between the read and the ZREM
        out = [lk.__class__(lk.jid, lk.published, "done", final="returned") for lk in real(minion, view, **kw)]
        h.redis.zadd(h.store.keys.queue("beta"), {J2: 1.0})
        return out

    monkeypatch.setattr(h.store, "look", look_and_sweep_meanwhile)
    h.store.pending(["beta"])
    assert h.redis.zrange(h.store.keys.queues, 0, -1) == [b"beta"]
    assert h.redis.ttl(h.store.keys.queues) > 0, "P:queues re-created by _drop_stale without EXPIRE"
