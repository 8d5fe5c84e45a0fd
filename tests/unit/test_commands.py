import json

import fakeredis
import pytest
from conftest import JID, new_event, ret_event
from salt_job_retry import commands, saltside
from salt_job_retry.commands import Env

FRESH = "20261122060000000001"


@pytest.fixture
def env(h):
    e = Env({"sock_dir": "/nonexistent"}, h.conf, h.store)
    e.publish = h.publish
    e.fire = h.fire
    e.up = set()
    e.busy = set()
    e.probe = lambda minions, jid, timeout: ({m for m in minions if m in e.up}, {m for m in minions if m in e.busy})
    e.known_minions = lambda: {"alpha", "beta", "gamma"}
    e.new_jid = lambda: FRESH
    e.h = h
    return e


def run(env, name, **kwargs):
    out = commands.COMMANDS[name](env, **kwargs)
    json.dumps(out)  # --out=json must work
    return out


def published_job(env):
    env.h.record(new_event(minions=["alpha", "beta", "gamma"]), ret_event("alpha"))
    env.h.clock.advance(6)


def test_pending_lists_every_minion_and_one(env):
    published_job(env)
    run(env, "enqueue")
    everyone = run(env, "pending")
    assert set(everyone) == {"beta", "gamma"}
    entry = everyone["beta"][0]
    assert entry["jid"] == JID and entry["fun"] == "cmd.run" and entry["attempts"] == 0
    assert entry["arg"][0] == "echo hi" and entry["published_at"].endswith("Z") and entry["state"] == "pending"
    assert run(env, "pending", minion_id="alpha") == {"alpha": []}


def test_pending_unknown_minion_is_an_error(env):
    out = run(env, "pending", minion_id="nosuch")
    assert out["retcode"] == 1 and "unknown minion 'nosuch'" in out["error"]


def test_enqueue_reports_what_it_queued(env):
    published_job(env)
    assert run(env, "enqueue") == {"queued": {JID: ["beta", "gamma"]}, "count": 2}
    assert run(env, "enqueue") == {"queued": {}, "count": 0}


def test_flush_cancels_queued_and_unswept(env):
    env.h.record(new_event(minions=["beta"]))  # not swept yet
    out = run(env, "flush", minion_id="beta")
    assert out == {"minion": "beta", "flushed": 1, "jids": [JID]}
    env.h.clock.advance(60)
    run(env, "enqueue")
    assert env.h.serve("beta").replayed == []
    assert run(env, "status", jid=JID)["minions"]["beta"]["state"] == "flushed"


def test_flush_one_jid(env):
    other = "20261122050816460001"
    env.h.record(new_event(minions=["beta"]), new_event(jid=other, minions=["beta"]))
    env.h.clock.advance(6)
    run(env, "enqueue")
    assert run(env, "flush", minion_id="beta", jid=other)["jids"] == [other]
    assert [e["jid"] for e in run(env, "pending", minion_id="beta")["beta"]] == [JID]


def test_flush_errors(env):
    assert "unknown jid" in run(env, "flush", minion_id="beta", jid="20990101000000000000")["error"]
    assert "unknown minion" in run(env, "flush", minion_id="nosuch")["error"]
    assert "invalid jid" in run(env, "flush", minion_id="beta", jid="../../x")["error"]


def test_retry_publishes_to_responders_and_queues_the_rest(env):
    published_job(env)
    env.up = {"beta"}
    out = run(env, "retry", jid=JID)
    assert out == {"jid": JID, "retry_jid": FRESH, "published": ["beta"], "running": [], "queued": ["gamma"]}
    assert env.h.published == [("beta", FRESH, "cmd.run", 0)]
    assert env.h.redis.get(env.store.keys.alias(FRESH)) == JID.encode()
    # the fresh jid's `new` is not a job of its own; its return closes the original
    env.h.record(new_event(jid=FRESH, minions=["beta"]))
    env.h.record(ret_event("beta", jid=FRESH, metadata={"job_retry": {"orig_jid": JID}}))
    status = run(env, "status", jid=JID)["minions"]
    assert status["beta"]["state"] == "returned" and status["gamma"]["state"] == "pending"
    assert env.h.serve("gamma").replayed == [JID]


def test_retry_leaves_a_minion_that_still_runs_the_job_alone(env):
    published_job(env)
    env.up, env.busy = {"gamma"}, {"beta"}
    out = run(env, "retry", jid=JID)
    assert out["running"] == ["beta"] and out["published"] == ["gamma"] and out["queued"] == []
    assert [p[0] for p in env.h.published] == ["gamma"]


def test_status_explains_an_unrecorded_oversized_job(env, make):
    big = make(max_job_bytes=1024)
    env.h, env.store, env.conf = big, big.store, big.conf
    big.record(new_event(arg=["y" * 4096]))
    out = run(env, "status", jid=JID)
    assert out["recorded"] is False and "over max_job_bytes (1024)" in out["comment"]
    assert "cannot retry" in run(env, "retry", jid=JID)["error"]


def test_retry_gives_exhausted_minions_a_fresh_budget(env):
    env.h.record(new_event(minions=["beta"]))
    for _ in range(4):
        env.h.serve("beta")
        env.h.clock.advance(60)
    assert run(env, "status", jid=JID)["minions"]["beta"]["state"] == "exhausted"
    assert run(env, "retry", jid=JID)["queued"] == ["beta"]
    assert env.h.serve("beta").replayed == [JID]


def test_retry_errors_and_nothing_to_do(env):
    assert "unknown jid" in run(env, "retry", jid="20990101000000000000")["error"]
    env.h.record(new_event(jid=FRESH, fun="test.ping", arg=[]))
    assert "exclude_functions" in run(env, "retry", jid=FRESH)["error"]
    env.h.record(new_event(minions=["alpha"]), ret_event("alpha"))
    assert run(env, "retry", jid=JID)["published"] == []


def test_status_states(env):
    env.h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    out = run(env, "status", jid=JID)
    assert out["minions"] == {
        "alpha": {"state": "returned", "attempts": 0},
        "beta": {"state": "waiting", "attempts": 0},
    }
    env.h.clock.advance(6)
    assert run(env, "status", jid=JID)["summary"] == {"returned": 1, "pending": 1}
    assert out["fun"] == "cmd.run" and out["published_at"].endswith("Z")


def test_status_of_excluded_and_unknown_jobs(env):
    env.h.record(new_event(fun="saltutil.find_job", arg=["x"]))
    out = run(env, "status", jid=JID)
    assert out["excluded"] is True and "exclude_functions" in out["comment"]
    assert run(env, "status", jid="20990101000000000000")["retcode"] == 1


def test_invoke_disabled_says_so():
    out = commands.invoke({"job_retry": {"enabled": False}}, {}, "pending")
    assert out["retcode"] == 1 and "disabled" in out["error"]
    assert commands.invoke({}, {}, "pending")["retcode"] == 1


def test_invoke_invalid_config():
    out = commands.invoke({"job_retry": {"enabled": "yes"}}, {}, "pending")
    assert out["retcode"] == 1 and "job_retry:enabled: expected boolean, got 'yes'" in out["error"]


def test_invoke_redis_unreachable_is_a_message_not_a_traceback():
    opts = {"job_retry": {"enabled": True, "redis_url": "redis://:hunter2@127.0.0.1:1/0", "socket_timeout": 1}}
    out = commands.invoke(opts, {}, "status", jid=JID)
    assert out["retcode"] == 1
    assert out["error"].startswith("Redis unreachable at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in out["error"]


def test_invoke_reuses_the_cached_client(server):
    opts = {"job_retry": {"enabled": True}, "sock_dir": "/nonexistent"}
    context = {}
    conf = saltside.load_config(opts)
    context[saltside.CONTEXT_KEY] = {saltside.client_ident(conf): fakeredis.FakeRedis(server=server)}
    assert commands.invoke(opts, context, "enqueue") == {"queued": {}, "count": 0}


def two_jobs_for_three_minions(env):
    other = "20261122050816460001"
    env.h.record(
        new_event(minions=["web1", "web2", "db1"]), new_event(jid=other, fun="state.apply", arg=[], minions=["web1"])
    )
    env.h.clock.advance(6)
    run(env, "enqueue")
    return other


def test_pending_filters_by_minion_glob_and_function(env):
    other = two_jobs_for_three_minions(env)
    assert set(run(env, "pending", minion_id="web*")) == {"web1", "web2"}
    by_fun = run(env, "pending", fun="state.*")
    assert {m: [e["jid"] for e in jobs] for m, jobs in by_fun.items()} == {"web1": [other]}
    nothing = run(env, "pending", minion_id="nomatch*")  # like Salt's "No minions matched the target"
    assert nothing["retcode"] == 1 and "no minions matched" in nothing["error"]


def test_flush_glob_dry_run_then_for_real(env):
    two_jobs_for_three_minions(env)
    preview = run(env, "flush", minion_id="web*", dry_run=True)
    assert preview["dry_run"] is True and preview["flushed"] == 3 and set(preview["minions"]) == {"web1", "web2"}
    assert set(run(env, "pending")) == {"web1", "web2", "db1"}  # nothing changed
    done = run(env, "flush", minion_id="web*")
    assert done["flushed"] == 3 and set(run(env, "pending")) == {"db1"}


def test_flush_of_many_minions_fires_progress(env):
    minions = [f"n{i:03d}" for i in range(250)]
    env.h.record(new_event(minions=minions))
    env.h.clock.advance(6)
    run(env, "enqueue")
    assert run(env, "flush", minion_id="n*")["flushed"] == 250
    progress = [d for t, d in env.h.events if t == "salt/job_retry/progress/flush"]
    assert [p["done"] for p in progress] == [100, 200, 250] and progress[-1]["total"] == 250


def test_stats_and_prometheus(env):
    two_jobs_for_three_minions(env)
    env.h.serve("web2")
    env.h.clock.advance(30)
    counts = run(env, "stats")
    assert counts["tracked_jobs"] == 2 and counts["pending_total"] == 4 and counts["queued"] == 4
    assert counts["pending_by_minion"] == {"db1": 1, "web1": 2, "web2": 1}  # replayed, not yet returned
    assert counts["replays"] == 1
    assert counts["oldest_pending_age_seconds"] == 36  # published 6 s before the sweep, 30 s ago
    text = run(env, "stats", format="prometheus")
    assert "# TYPE salt_job_retry_replays_total counter\nsalt_job_retry_replays_total 1\n" in text
    assert 'salt_job_retry_pending{minion="web1"} 2' in text
    assert run(env, "stats", format="xml")["retcode"] == 1


# -- retry is idempotent while a delivery is in flight ---------------------------------------------


def test_second_retry_while_the_first_is_in_flight_publishes_nothing(env):
    published_job(env)
    env.up = {"beta", "gamma"}
    first = run(env, "retry", jid=JID)
    assert first["published"] == ["beta", "gamma"]
    # the minions have not started it yet (saltutil.running shows nothing): the Redis mark decides
    second = run(env, "retry", jid=JID)
    assert second["published"] == [] and second["running"] == ["beta", "gamma"] and second["retry_jid"] is None
    assert len(env.h.published) == 2


def test_retry_after_replay_wait_sends_again_to_an_idle_minion(env):
    published_job(env)
    env.up = {"beta"}
    assert run(env, "retry", jid=JID)["published"] == ["beta"]
    env.h.clock.advance(env.conf.replay_wait + 1)  # it never ran (saltutil.running: idle)
    assert run(env, "retry", jid=JID)["published"] == ["beta"]


def test_retry_leaves_a_replay_the_engine_has_in_flight_alone(env):
    published_job(env)
    run(env, "enqueue")
    env.h.start("beta")
    assert env.h.drive("beta") == [("beta", JID, "cmd.run", 1)]
    env.up = {"beta"}  # it has not started running it yet
    out = run(env, "retry", jid=JID)
    assert out["running"] == ["beta"] and out["published"] == []
    assert len(env.h.published) == 1


def test_engine_does_not_replay_what_retry_sent_to_the_process(env):
    published_job(env)
    run(env, "enqueue")
    env.h.start("beta")
    env.up = {"beta"}
    assert run(env, "retry", jid=JID)["published"] == ["beta"]
    assert env.h.drive("beta") == []
    env.h.clock.advance(env.conf.replay_wait + 1)
    assert env.h.drive("beta") == []  # retry's run belongs to the operator; the engine keeps out of it
    assert len(env.h.published) == 1


def test_failed_retry_publish_is_owed_and_replayed_under_the_fresh_jid(env):
    published_job(env)
    env.h.start("beta")
    env.up = {"beta"}
    real = env.publish

    def failing(minion, jid, job, attempt, extra):
        raise RuntimeError("master refused")

    env.publish = failing
    out = run(env, "retry", jid=JID)
    assert out["published"] == [] and out["queued"] == ["beta", "gamma"]
    env.publish = real
    assert env.h.drive("beta") == [("beta", FRESH, "cmd.run", 1)]  # the minion drops a copy it has


def test_runs_job_matches_the_original_a_replay_or_a_retry():
    plain = [{"jid": JID, "fun": "cmd.run"}]
    retried = [{"jid": FRESH, "metadata": {"job_retry": {"orig_jid": JID, "attempt": 0}}}]
    other = [{"jid": FRESH, "metadata": {"job_retry": {"orig_jid": "1"}}}, {"jid": "2"}, "junk"]
    assert saltside.runs_job(plain, JID) and saltside.runs_job(retried, JID)
    assert not saltside.runs_job(other, JID) and not saltside.runs_job([], JID)
    assert not saltside.runs_job("'saltutil.running' is not available.", JID)


# -- operator views ------------------------------------------------------------------------------


def test_flush_dry_run_reports_exactly_what_the_flush_cancels(env):
    env.h.record(new_event(jid="20261122050816400001", minions=["beta"]))  # swept, queued
    env.h.clock.advance(6)
    run(env, "enqueue")
    env.h.record(new_event(minions=["beta"], when=env.h.clock.now))  # not swept yet
    env.h.start("beta")
    env.h.drive("beta")  # the first is in flight now
    dry = run(env, "flush", minion_id="beta", dry_run=True)
    real = run(env, "flush", minion_id="beta")
    assert sorted(dry["minions"]["beta"]) == sorted(real["jids"]) == sorted(["20261122050816400001", JID])
    assert dry["flushed"] == real["flushed"] == 2
    assert run(env, "flush", minion_id="beta", dry_run=True)["flushed"] == 0


def test_flush_glob_reaches_a_minion_owed_only_unswept_jobs(env):
    env.h.record(new_event(minions=["beta"]))  # beta has no queue yet
    assert run(env, "flush", minion_id="be*", dry_run=True)["minions"] == {"beta": [JID]}
    assert run(env, "flush", minion_id="be*")["minions"] == {"beta": [JID]}


@pytest.mark.parametrize("name", ["flush", "pending"])
def test_glob_that_matches_nothing_is_an_error(env, name):
    out = run(env, name, minion_id="no*such")
    assert out["retcode"] == 1 and "no minions matched the target 'no*such'" in out["error"]


def test_a_view_racing_the_sweep_does_not_hide_the_minion(env, monkeypatch):
    published_job(env)
    run(env, "enqueue")
    env.h.record(ret_event("beta"))  # beta's queue holds only a returned job: the view empties it
    real = env.store._drop_stale

    def sweep_in_between(stale, empty):  # the sweep queues a new job for beta between read and drop
        env.store.run(lambda b: (b.call("ZADD", env.store.keys.queue("beta"), 1, "20261122050816400009"),))
        env.store.run(lambda b: (b.call("ZADD", env.store.keys.queues, 1, "beta"),))
        real(stale, empty)

    monkeypatch.setattr(env.store, "_drop_stale", sweep_in_between)
    run(env, "pending")
    assert "beta" in env.store.queued_minions()


def test_stats_do_not_count_a_retry_jid_as_a_job(env):
    published_job(env)
    env.up = {"beta"}
    run(env, "retry", jid=JID)
    env.h.record(new_event(jid=FRESH, minions=["beta"]))  # Salt announces the retry's publish
    assert run(env, "stats")["tracked_jobs"] == 1
    assert run(env, "stats")["unswept_jobs"] == 1  # the original only


def test_queue_of_a_slow_minion_nobody_reads_stays_bounded(make):
    h = make(ttl=3600, timeout=5)
    for i in range(30):  # beta is up but always later than timeout; nobody reads its queue
        jid = f"202611220508164{i:05d}"
        h.record(new_event(jid=jid, minions=["beta"], when=h.clock.now))
        h.clock.advance(6)
        h.replayer.sweep()
        h.record(ret_event("beta", jid=jid))
        h.clock.advance(600)
    assert h.redis.zcard(h.store.keys.queue("beta")) <= 3600 // 606 + 1


def test_retry_before_the_engine_knows_the_process_is_not_replayed_by_it(env):
    published_job(env)
    run(env, "enqueue")
    env.h.start("beta", pid="")  # connected; its pid is still being asked for
    env.up = {"beta"}
    assert run(env, "retry", jid=JID)["published"] == ["beta"]
    env.h.start("beta", pid="4242")  # the probe answers
    assert env.h.drive("beta") == []
    assert len(env.h.published) == 1


def test_retry_while_a_reconnection_is_being_identified_leaves_it_to_the_engine(env):
    """The replay went to process 100 moments ago; beta reconnects and its pid is being asked for:
    it may be process 100 again (a master restart) running the replay, so retry keeps out."""
    published_job(env)
    run(env, "enqueue")
    env.h.start("beta", pid="100")
    env.h.drive("beta")  # the replay went to process 100
    env.h.record(ret_event("gamma"))
    env.h.clock.advance(1)
    env.h.start("beta", pid="")
    env.up = {"beta"}
    out = run(env, "retry", jid=JID)
    assert out["published"] == [] and out["running"] == ["beta"]
    env.h.start("beta", pid="100")  # the same process: the replay runs on, nothing more goes out
    assert env.h.drive("beta") == [] and len(env.h.published) == 1
    env.h.clock.advance(1)
    env.h.start("beta", pid="200")  # a restart after all: the engine delivers it, once
    assert env.h.drive("beta") == [("beta", JID, "cmd.run", 2)]


# -- third review: retry against the pid probe, failed publishes ----------------------------------


def test_second_retry_after_the_pid_was_learnt_publishes_nothing(env):
    published_job(env)
    run(env, "enqueue")
    env.h.start("beta", pid="")
    env.up = {"beta"}
    assert run(env, "retry", jid=JID)["published"] == ["beta"]
    env.h.start("beta", pid="4242")
    env.new_jid = lambda: "20261122060000000002"
    assert run(env, "retry", jid=JID)["published"] == []
    assert len(env.h.published) == 1


def test_retry_to_an_unidentified_process_survives_its_reconnection(env):
    published_job(env)
    run(env, "enqueue")
    env.h.record(ret_event("gamma"))
    env.h.start("beta", pid="")
    env.up = {"beta"}
    assert run(env, "retry", jid=JID)["published"] == ["beta"]
    env.h.start("beta", pid="200")
    env.h.clock.advance(10)
    env.h.start("beta", pid="200")  # a master restart: the same process connects again
    assert env.h.drive("beta") == [] and len(env.h.published) == 1


def test_failed_retry_to_a_minion_connected_before_the_job_is_sent_by_the_engine(env):
    env.h.start("beta", pid="100", at=env.h.clock.now - 60)
    published_job(env)
    run(env, "enqueue")
    env.up = {"beta"}
    real = env.publish

    def failing(*args):
        raise RuntimeError("master refused")

    env.publish = failing
    assert run(env, "retry", jid=JID)["queued"] == ["beta", "gamma"]
    env.publish = real
    assert env.h.drive("beta") == [("beta", FRESH, "cmd.run", 1)]


def test_pending_lists_a_minion_whose_unswept_jobs_its_start_gathered(env):
    env.h.record(new_event(minions=["beta"]))
    env.h.clock.advance(2)  # before timeout: not swept
    env.h.start("beta", pid="100")
    assert "beta" in run(env, "pending")


def test_flush_dry_run_lists_a_job_not_swept_yet(env):
    env.h.record(new_event(minions=["beta"]))  # beta is down; the job is younger than timeout
    dry = run(env, "flush", minion_id="beta", dry_run=True)
    assert dry["minions"] == {"beta": [JID]} and dry["flushed"] == 1
    assert run(env, "flush", minion_id="beta")["jids"] == [JID]
