"""
The fault matrix of the delivery guarantees: each fault on a real redis-server,
and on real Salt daemons where the fault is in Salt. Every test records one
row (published, ran, ran twice, lost), printed at the end of the run.
"""

import contextlib
import datetime
import itertools
import time
from collections import Counter

from salt_job_retry import config, redis_io, store
from salt_job_retry.recorder import Recorder
from salt_job_retry.replay import EngineLoop, Replayer
from salt_job_retry.spool import Spool

from tests.saltlab import Lab, wait_for

SETTLE = 5
_prefixes = itertools.count()


class InProcessEngine:
    """The real engine code on a real Redis, publishing into a list instead of a master."""

    def __init__(self, lab, tmp_path, prefix, engine="e1", **options):
        raw = {"enabled": True, "redis_url": f"redis://127.0.0.1:{lab.redis_port}/0", "key_prefix": prefix}
        self.conf = config.load({**raw, "timeout": 5, "claim_lease": 1, **options})
        self.store = store.Store(redis_io.connect(self.conf), self.conf)
        self.recorder = Recorder(self.store, self.conf, Spool(str(tmp_path / prefix), 1 << 20))
        self.published = []  # (minion, jid, at)
        self.events = []
        self.crash = False
        replayer = Replayer(self.store, self.conf, self.publish, lambda d, t: self.events.append(t), engine=engine)
        self.feed = []
        self.loop = EngineLoop(replayer, lambda wait: self.feed.pop(0) if self.feed else None, 10, self.recorder)

    def publish(self, minion, jid, job, attempt, extra=None):
        if self.crash:
            raise KeyboardInterrupt("engine process killed")
        self.published.append((minion, jid, time.monotonic()))

    def start_event(self, minion, stamp=None, pid=100):
        """A start event as a minion with `start_event_grains: [pid]` fires it."""
        stamp = stamp or datetime.datetime.now(datetime.timezone.utc).isoformat()
        data = {"id": minion, "_stamp": stamp, "grains": {"pid": pid}}
        self.feed.append({"tag": f"salt/minion/{minion}/start", "data": data})


def new_event(jid, minions):
    data = {"jid": jid, "fun": "cmd.run", "arg": ["true"], "tgt": "*", "tgt_type": "glob", "minions": minions}
    return {"tag": f"salt/job/{jid}/new", "data": {**data, "user": "root"}}


def prefix():
    return f"fault{next(_prefixes)}"


def test_two_engines_one_redis_replay_once(redis_only, tmp_path, fault_matrix):
    p = prefix()
    first, second = InProcessEngine(redis_only, tmp_path, p), InProcessEngine(redis_only, tmp_path, p, engine="e2")
    first.recorder.record([new_event("20261122070000000001", ["beta"])], trusted=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    first.start_event("beta", stamp)
    for _ in range(3):
        first.loop.step()  # the first master serves it at once ...
    second.start_event("beta", stamp)  # ... the second gets the same start event late
    for _ in range(6):
        first.loop.step()
        second.loop.step()
    ran = len(first.published) + len(second.published)
    fault_matrix("1 two engines on one Redis, one start each", 1, ran, max(0, ran - 1), 1 - min(ran, 1))
    assert ran == 1


def test_engine_killed_between_claim_and_publish(redis_only, tmp_path, fault_matrix):
    p = prefix()
    doomed, survivor = InProcessEngine(redis_only, tmp_path, p), InProcessEngine(redis_only, tmp_path, p)
    doomed.recorder.record([new_event("20261122070000000002", ["beta"])], trusted=True)
    doomed.crash = True
    doomed.start_event("beta")
    with contextlib.suppress(KeyboardInterrupt):
        doomed.loop.step()  # dies: its claim and the minion's sequence stay in Redis
    deadline = time.monotonic() + 10
    while not survivor.published and time.monotonic() < deadline:
        survivor.loop.step()  # the restarted engine of the same master
    fault_matrix(
        "2 engine killed between claim and publish",
        1,
        len(survivor.published),
        0,
        1 - len(survivor.published),
        "(lease 1 s)",
    )
    assert [m for m, _, _ in survivor.published] == ["beta"]


def test_fleet_back_at_once_is_rate_limited_and_complete(redis_only, tmp_path, fault_matrix):
    engine = InProcessEngine(redis_only, tmp_path, prefix(), max_replays_per_second=100)
    fleet = [f"m{i:04d}" for i in range(300)]
    engine.recorder.record([new_event("20261122070000000003", fleet)], trusted=True)
    for minion in fleet:
        engine.start_event(minion)
    began = time.monotonic()
    while len(engine.published) < len(fleet) and time.monotonic() - began < 30:
        engine.loop.step()
    took = time.monotonic() - began
    counts = Counter(m for m, _, _ in engine.published)
    times = sorted(t for _, _, t in engine.published)
    busiest = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    fault_matrix(
        "8 300 minions back at once, 100 replays/s",
        300,
        len(counts),
        sum(c > 1 for c in counts.values()),
        300 - len(counts),
        f"drained in {took:.1f} s, busiest second {busiest}",
    )
    assert set(counts) == set(fleet) and max(counts.values()) == 1
    assert busiest <= 111  # one second of refill plus a 100 ms burst
    assert took >= 2.5  # 300 at 100/s cannot drain in less than 3 s


def pending(lab, minion):
    code, out = lab.run("job_retry.pending")
    return [e["jid"] for e in out.get(minion, [])] if code == 0 else []


def test_redis_outage_loses_nothing(fleet, fault_matrix):
    fleet.kill_minion("beta")
    fleet.stop_redis()
    jid = fleet.publish_trace("*", "outage")  # recorded into the spool, not Redis
    assert fleet.wait_trace("alpha", "outage") == 1
    code, out = fleet.run("job_retry.pending")
    assert code == 1 and out["error"].startswith("Redis unreachable at redis://127.0.0.1:"), out
    fleet.start_minion("beta")  # its start event arrives while Redis is down
    time.sleep(3)
    assert fleet.trace_count("beta", "outage") == 0
    fleet.start_redis()  # empty: nothing was persisted, the spool has it all
    ran = fleet.wait_trace("beta", "outage", timeout=60)  # the engine backs off up to 30 s
    time.sleep(SETTLE)
    ran, alpha = fleet.trace_count("beta", "outage"), fleet.trace_count("alpha", "outage")
    fault_matrix("3 Redis down during publish, returns and start", 2, ran + alpha, max(0, ran - 1), 1 - min(ran, 1))
    assert (ran, alpha) == (1, 1)
    assert wait_for(lambda: fleet.run("job_retry.status", jid)[1].get("summary") == {"returned": 2})
    assert "spooled" in fleet.master_log() and "Redis is reachable again" in fleet.master_log()


def test_master_restart_replays_only_what_is_owed(fleet, fault_matrix):
    before = fleet.publish_trace("*", "before")
    for minion in ("alpha", "beta"):
        assert fleet.wait_trace(minion, "before") == 1
    # beta's *return* must be recorded before it goes down: killed between running the job and
    # returning, it would rightly be owed the job again (at-least-once without an ack)
    assert wait_for(lambda: fleet.run("job_retry.status", before)[1].get("summary") == {"returned": 2})
    fleet.kill_minion("beta")
    fleet.publish_trace("*", "owed")
    assert fleet.wait_trace("alpha", "owed") == 1
    time.sleep(2)  # let alpha's return reach Redis
    fleet.restart_master()  # alpha reconnects: a start event for a minion that owes nothing
    fleet.start_minion("beta")
    assert fleet.wait_trace("beta", "owed") == 1
    time.sleep(SETTLE)
    counts = {(m, t): fleet.trace_count(m, t) for m in ("alpha", "beta") for t in ("before", "owed")}
    ran = sum(counts.values())
    fault_matrix(
        "5 master restart: start burst",
        4,
        ran,
        sum(c > 1 for c in counts.values()),
        sum(c == 0 for c in counts.values()),
    )
    assert set(counts.values()) == {1}, counts


def test_frozen_minion_runs_the_job_once(fleet, fault_matrix):
    fleet.freeze_minion("beta")
    try:
        jid = fleet.publish_trace("*", "frozen")
        assert fleet.wait_trace("alpha", "frozen") == 1
        assert wait_for(lambda: jid in pending(fleet, "beta"), timeout=20)  # queued, yet no start event
    finally:
        fleet.freeze_minion("beta", frozen=False)
    assert fleet.wait_trace("beta", "frozen") == 1  # it runs the job it had buffered
    time.sleep(SETTLE)
    ran = fleet.trace_count("beta", "frozen")
    fault_matrix("7 frozen minion (SIGSTOP, SIGCONT)", 1, ran, max(0, ran - 1), 1 - min(ran, 1))
    assert ran == 1
    assert wait_for(lambda: fleet.run("job_retry.status", jid)[1]["minions"]["beta"]["state"] == "returned")


def test_redis_restart_with_aof_keeps_pending_work(fault_matrix):
    with Lab(redis_aof=True) as lab:
        lab.kill_minion("beta")
        jid = lab.publish_trace("*", "aof")
        assert wait_for(lambda: jid in pending(lab, "beta"), timeout=20)
        lab.stop_redis()
        lab.start_redis()  # AOF replayed; the Lua script cache is empty (NOSCRIPT)
        assert jid in pending(lab, "beta")
        lab.start_minion("beta")
        assert lab.wait_trace("beta", "aof") == 1
        time.sleep(SETTLE)
        ran = lab.trace_count("beta", "aof")
        fault_matrix("4 Redis restarted with AOF", 1, ran, max(0, ran - 1), 1 - min(ran, 1))
        assert ran == 1

        lab.kill_minion("beta")
        jid = lab.publish_trace("*", "noaof")
        assert wait_for(lambda: jid in pending(lab, "beta"), timeout=20)
        lab.stop_redis()
        lab.redis_aof = False
        lab.start_redis()  # no persistence: everything recorded is gone (documented)
        code, out = lab.run("job_retry.status", jid)
        assert code == 1 and "unknown jid" in out["error"]
        lab.start_minion("beta")
        time.sleep(SETTLE)
        ran = lab.trace_count("beta", "noaof")
        fault_matrix("4b Redis restarted without persistence", 1, ran, 0, 1 - ran, "(documented loss)")
        assert ran == 0


def test_job_that_kills_its_minion_stops_after_max_attempts(fault_matrix):
    with Lab(job_retry={"replay_interrupted": True}) as lab:
        killer_scenario(lab, fault_matrix)


def killer_scenario(fleet, fault_matrix):
    fleet.kill_minion("beta")
    pidfile = f"{fleet.root}/{{{{ grains.id }}}}/minion.pid"
    command = fleet.trace_cmd("killer") + f"; kill -9 $(cat {pidfile})"
    jid = fleet.salt_async("beta", "cmd.run", command, "template=jinja")
    for attempt in (1, 2, 3):
        fleet.start_minion("beta")
        assert fleet.wait_trace("beta", "killer", count=attempt, timeout=20) == attempt
        assert wait_for(lambda: not fleet.minion_running("beta"), timeout=15)
        fleet.kill_minion("beta")  # reap the rest of its process group
        time.sleep(2.5)  # past the lab's 2 s claim lease: the next start is a new attempt
    fleet.start_minion("beta")  # max_attempts is 3: this start finds it exhausted
    time.sleep(SETTLE)
    ran = fleet.trace_count("beta", "killer")
    fault_matrix("6 job kills its minion (max_attempts 3)", 1, ran, 0, 0, "3 replays, then exhausted")
    assert ran == 3
    state = fleet.run("job_retry.status", jid)[1]["minions"]["beta"]
    assert state["state"] == "exhausted" and state["attempts"] == 3
    assert pending(fleet, "beta") == []
