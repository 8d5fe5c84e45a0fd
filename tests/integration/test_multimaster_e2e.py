"""
Several masters on one Redis, on real daemons: two salt-masters (127.0.0.2 and 127.0.0.3, each
with the returner and the engine) and hot or failover minions. What counts is what ran on the
minion (its trace lines, in order) and what each master published (its ``Published command ...
with jid`` log lines): every owed job runs once, in publish order, through one replay in all.

Each lab profile below is one module-scoped Lab; tests that share a profile share its daemons, so
a test that disturbs an engine comes last among the tests of its profile.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import threading
import time
from urllib.parse import quote

import pytest

from tests.saltlab import LIBFAKETIME, Lab, clock_off, salt_version
from tests.saltlab import wait_for as _wait_for

SETTLE = 5  # seconds to wait for a duplicate that must not come
MASTERS = ("m1", "m2")
PID_GRAINS = {"start_event_grains": ["pid"]}
NEWJID_REPLAY_WAIT = 10
FAILOVER_REPLAY_WAIT = 8

PROFILES = {
    # hot multi-master: beta (and alpha) list both masters; pid in the start event
    "hot": {"masters": MASTERS, "minion_mode": "hot", "minion_extra": PID_GRAINS},
    # the same without start_event_grains: each engine asks the minion (grains.item pid)
    "hot-probe": {"masters": MASTERS, "minion_mode": "hot"},
    # replays under a fresh jid: the minion's own duplicate drop does not help. replay_wait is short
    # so that a sequence that misses its wake-up shows as a gap of replay_wait, not a 300 s stall
    "hot-newjid": {
        "masters": MASTERS,
        "minion_mode": "hot",
        "minion_extra": PID_GRAINS,
        "job_retry": {"replay_jid": "new", "replay_wait": NEWJID_REPLAY_WAIT},
    },
    # failover: beta talks to m1 only; a slow token bucket defers the replays; a replay whose return
    # Salt drops (its master died) holds the sequence only replay_wait
    "failover": {
        "masters": MASTERS,
        "minions": ("beta",),
        "minion_mode": "failover",
        "minion_extra": PID_GRAINS,
        "job_retry": {"max_replays_per_second": 0.5, "replay_wait": FAILOVER_REPLAY_WAIT},
    },
    # failover with master_failback: beta goes back to m1 when it returns; slow bucket (one replay
    # every 4 s) so that the failback lands in the middle of the sequence
    "failback": {
        "masters": MASTERS,
        "minions": ("beta",),
        "minion_mode": "failover",
        "minion_extra": {**PID_GRAINS, "master_failback": True, "master_failback_interval": 2},
        "job_retry": {"max_replays_per_second": 0.25, "replay_wait": FAILOVER_REPLAY_WAIT},
    },
    # one master: a killed engine can only be continued by the engine Salt restarts
    "single": {"minions": ("beta",), "minion_extra": PID_GRAINS},
    # hot multi-master, m2's clock an hour ahead (libfaketime)
    "skew": {
        "masters": MASTERS,
        "minions": ("beta",),
        "minion_mode": "hot",
        "minion_extra": PID_GRAINS,
        "master_env": {"m2": clock_off("+1h")},
    },
}


@pytest.fixture(scope="module")
def mm(request):
    """The Lab of the profile named by indirect parametrization; torn down when the profile changes."""
    with Lab(**PROFILES[request.param]) as running:
        yield running


def profile(*names):
    return pytest.mark.parametrize("mm", names, indirect=True)


# ------------------------------------------------------------------------------------- helpers
wait_for = functools.partial(_wait_for, every=0.2)  # these tests poll Redis and logs: cheap, so often


def ensure_up(lab, *minions):
    for name in minions:
        if not lab.minion_running(name):
            lab.start_minion(name)


def beta_misses_one_job_per_master(lab, prefix):
    """beta down, alpha up: <prefix>0 published through m1, <prefix>1 through m2; alpha ran both."""
    ensure_up(lab, "alpha", "beta")
    lab.kill_minion("beta")
    jids = [lab.publish_trace("*", f"{prefix}0", master="m1"), lab.publish_trace("*", f"{prefix}1", master="m2")]
    for i in range(2):
        assert lab.wait_trace("alpha", f"{prefix}{i}") == 1
    return jids


def beta_status(lab, jid, minion="beta"):
    """The minion's entry in ``salt-run job_retry.status <jid>`` (run on a master that is up)."""
    code, out = lab.run("job_retry.status", jid, master=next(m for m in lab.masters if lab.master_running(m)))
    assert code == 0 and isinstance(out, dict), out
    return out["minions"][minion]


def tagged(lab, minion, prefix):
    """The minion's trace lines written by this test's jobs (tags start with prefix)."""
    return [line for line in lab.trace_lines(minion) if line.startswith(prefix)]


_CLIENTS: dict[int, object] = {}


def rds(lab):
    """One Redis client per lab Redis (lab.redis() makes a new pool every call)."""
    if lab.redis_port not in _CLIENTS:
        _CLIENTS[lab.redis_port] = lab.redis()
    return _CLIENTS[lab.redis_port]


def seq(lab, minion="beta"):
    """HGETALL of the minion's replay sequence (``jr:{m:<id>}:seq``)."""
    return rds(lab).hgetall(f"jr:{{m:{minion}}}:seq")


def wait_swept(lab, jids, minion="beta", timeout=20):
    """Wait until the sweep queued every jid for the minion (timeout 5 s + interval 2 s in the lab).

    A minion down longer than ``timeout`` comes back to swept jobs; then no later sweep wakes its
    sequence, which tests the engine's own wake-ups alone.
    """
    client = rds(lab)
    key = f"jr:{{m:{minion}}}:queue"
    assert wait_for(lambda: all(client.zscore(key, j) is not None for j in jids), timeout), client.zrange(key, 0, -1)


def engine_id(lab, master):
    """The engine's id in Redis (saltside.engine_id): ``<master id>@<interface>:<ret_port>``."""
    return f"{lab.master_id(master)}@{lab.master_ip(master)}:{lab.ret_port}"


def redis_now(lab):
    seconds, micros = rds(lab).time()
    return seconds + micros / 1e6


def active_due_in(lab, master, minion="beta"):
    """Seconds until the minion is due on the master's engine work set (None: not on it)."""
    score = rds(lab).zscore(f"jr:{{active}}:{quote(engine_id(lab, master), safe='')}", minion)
    return None if score is None else score / 1000 - redis_now(lab)


def heartbeat_age(lab, engine):
    """Seconds since the engine's last heartbeat (inf if it never beat)."""
    score = rds(lab).zscore("jr:{active}:engines", engine)
    return float("inf") if score is None else redis_now(lab) - score / 1000


def stats_counter(lab, name):
    return int(rds(lab).hget("jr:stats", name) or 0)


def total_published(lab, jid):
    return sum(lab.published_counts(jid).values())


def master_of_engine(lab, engine):
    """The lab master whose engine id (``<master id>@<ip>:<port>``) this is."""
    return next(m for m in lab.masters if engine.startswith(f"{lab.master_id(m)}@"))


def engine_starts(lab, master):
    """How many times the master's job_retry engine logged that it started."""
    return len(re.findall(r"job_retry engine \S+ started", lab.master_log(master)))


def replay_times(lab, master, jids):
    """Master-log timestamps (epoch s) of the engine's ``replayed <jid>`` lines for jids, in log order."""
    pattern = re.compile(r"^(\S+ \S+) \[salt_job_retry\.replay.*job_retry: replayed (\d+) ", re.MULTILINE)
    out = []
    for stamp, jid in pattern.findall(lab.master_log(master)):
        if jid in jids:
            out.append(time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000)
    return out


class FinalStates:
    """Samples ``x:<minion>`` (the final-state field) of each job's retry hash in Redis every 50 ms.

    A final state such as ``interrupted`` would be overwritten by nothing but a late return, which
    status shows as ``returned``: sampling is how a test sees that it never happened at all.
    """

    def __init__(self, lab, jids, minion="beta"):
        self.client = lab.redis()
        self.keys = {jid: f"jr:{{{jid}}}:retry" for jid in jids}
        self.field = f"x:{minion}"
        self.seen: dict[str, set[str]] = {jid: set() for jid in jids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for jid, key in self.keys.items():
                value = self.client.hget(key, self.field)
                if value:
                    self.seen[jid].add(value)
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def assert_replayed_once_in_order(lab, prefix, jids, minion="beta", settle=SETTLE):
    """Every job ran once on the minion, in publish order; one replay each across all masters."""
    want = [f"{prefix}{i} {minion}" for i in range(len(jids))]
    lines = lab.wait_lines(
        minion, lambda _: tagged(lab, minion, prefix) == want or len(tagged(lab, minion, prefix)) > len(want), 45
    )
    assert tagged(lab, minion, prefix) == want, (lines, seq(lab, minion))
    time.sleep(settle)
    assert tagged(lab, minion, prefix) == want, lab.trace_lines(minion)
    for jid in jids:
        # the original publish + one replay, across all masters
        assert lab.wait_published(jid, 2, timeout=5) == 2, (jid, lab.published_counts(jid))
        assert wait_for(lambda jid=jid: beta_status(lab, jid, minion)["state"] == "returned", 20), (
            jid,
            beta_status(lab, jid, minion),
        )
        assert beta_status(lab, jid, minion)["attempts"] == 1, (jid, beta_status(lab, jid, minion))


# ------------------------------------------------------------------------------------- 1 and 2
@profile("hot", "hot-probe")
def test_hot_minion_gets_each_owed_job_once_in_order(mm, request):
    """Both masters see beta start (same pid): one engine serves it, one replay per job in all.

    With pids in the start events beta comes back before the sweep (its start gathers the unswept
    jobs); when the engines must ask for the pid, after the sweep (the jobs are queued already).
    """
    prefix = "hot-"
    jids = beta_misses_one_job_per_master(mm, prefix)
    if request.node.callspec.params["mm"] == "hot-probe":
        wait_swept(mm, jids)
    assert [mm.wait_published(j, 1, master=m) for j, m in zip(jids, MASTERS, strict=True)] == [1, 1]
    assert [mm.published_counts(j) for j in jids] == [{"m1": 1, "m2": 0}, {"m1": 0, "m2": 1}]
    with FinalStates(mm, jids) as finals:
        mm.start_minion("beta")  # waits for its ready line from both masters
        assert_replayed_once_in_order(mm, prefix, jids)
    assert finals.seen == {jid: set() for jid in jids}, finals.seen  # never interrupted (nor anything final)
    assert stats_counter(mm, "interrupted") == 0
    assert [mm.trace_count("alpha", f"hot-{i}") for i in range(2)] == [1, 1]
    # both engines saw beta's start (the published counts above show one replay per job in all)
    for master in MASTERS:
        assert re.search(r"job_retry: beta connected \(", mm.master_log(master)), master


@profile("hot-newjid")
def test_hot_minion_with_fresh_replay_jids_runs_each_job_once(mm):
    """replay_jid: new loses the minion's same-jid drop: only the one claim keeps it to one run."""
    prefix = "new-"
    jids = beta_misses_one_job_per_master(mm, prefix)
    with FinalStates(mm, jids) as finals:
        mm.start_minion("beta")
        want = ["new-0 beta", "new-1 beta"]
        mm.wait_lines("beta", lambda _: len(tagged(mm, "beta", prefix)) >= 2, 45)
        time.sleep(SETTLE)
        assert tagged(mm, "beta", prefix) == want, mm.trace_lines("beta")
    client = rds(mm)
    aliases = {}
    for key in client.scan_iter("jr:{*}:alias"):
        aliases.setdefault(client.get(key), []).append(key.split("{")[1].split("}")[0])
    for jid in jids:
        assert total_published(mm, jid) == 1, mm.published_counts(jid)  # the original only
        assert len(aliases.get(jid, [])) == 1, aliases  # one fresh jid per owed job ...
        assert total_published(mm, aliases[jid][0]) == 1, mm.published_counts(aliases[jid][0])  # ... published once
        assert wait_for(lambda jid=jid: beta_status(mm, jid)["state"] == "returned", 20), beta_status(mm, jid)
        assert beta_status(mm, jid)["attempts"] == 1
    assert finals.seen == {jid: set() for jid in jids}, finals.seen
    assert stats_counter(mm, "interrupted") == 0


@profile("hot-newjid")
def test_fresh_jid_replay_return_moves_the_sequence_on(mm):
    """The next owed job goes out when the previous replay returned, not replay_wait later.

    Regression: the engine used to wait, after the ack, for a return under the original jid only,
    while it comes back under the fresh one (fixed in 51f31cc).
    """
    ensure_up(mm, "alpha", "beta")
    mm.kill_minion("beta")
    prefix = "nw-"
    # each job sleeps 2 s, then writes its line: the ack comes well before the return (with a
    # fast job the return may be recorded before the engine looks again after the ack, hiding the bug)
    jids = [
        mm.salt_async("beta", "cmd.run", "sleep 2; " + mm.trace_cmd(f"nw-{i}"), "template=jinja", master="m1")
        for i in range(2)
    ]
    wait_swept(mm, jids)
    mm.start_minion("beta")
    mm.wait_lines("beta", lambda _: len(tagged(mm, "beta", prefix)) >= 1, 20)
    first = time.monotonic()
    assert tagged(mm, "beta", prefix) == ["nw-0 beta"]
    # nw-0 returned right after writing its line: nw-1 should go out at once and write ~2 s later
    mm.wait_lines("beta", lambda _: len(tagged(mm, "beta", prefix)) >= 2, NEWJID_REPLAY_WAIT + 10)
    gap = time.monotonic() - first
    assert tagged(mm, "beta", prefix) == ["nw-0 beta", "nw-1 beta"]
    assert gap < NEWJID_REPLAY_WAIT / 2, (
        f"nw-1 ran {gap:.1f} s after nw-0 (replay_wait {NEWJID_REPLAY_WAIT} s); "
        f"seq {seq(mm)}; nw-0 {beta_status(mm, jids[0])}"
    )


# ------------------------------------------------------------------------------------- 3
@profile("failover")
def test_failover_minion_is_served_by_its_master_only(mm):
    """beta (failover) is connected to m1: m1 replays, deferred by the token bucket; m2 never publishes."""
    assert mm.engine_running("m2")
    assert mm.connected_masters("beta") == ["m1"]
    mm.kill_minion("beta")
    prefix = "fo-"
    jids = [mm.publish_trace("beta", f"fo-{i}", master="m1") for i in range(3)]
    with FinalStates(mm, jids) as finals:
        mm.start_minion("beta")
        assert mm.connected_masters("beta") == ["m1"]
        assert_replayed_once_in_order(mm, prefix, jids)
    for jid in jids:
        assert mm.published_counts(jid) == {"m1": 2, "m2": 0}
    assert finals.seen == {jid: set() for jid in jids}, finals.seen
    # 0.5 replays/s fleet-wide: consecutive replays at least ~2 s apart (the bucket deferred them)
    times = replay_times(mm, "m1", set(jids))
    assert len(times) == 3, times
    assert all(b - a >= 1.5 for a, b in zip(times, times[1:], strict=False)), times
    assert "beta connected" not in mm.master_log("m2")  # m2 never saw beta


@pytest.mark.skipif(salt_version() < (3008,), reason="--start-event acknowledgements are new in Salt 3008")
@profile("failover")
def test_failover_master_dies_mid_sequence_the_new_master_continues(mm):
    """m1 stops while beta runs the first replay: beta fails over to m2 (same pid); m2's engine adopts
    m1's minions after 3 x claim_lease, asks beta through m2 and continues the sequence without
    sending the job in flight again; m1 comes back and sends nothing.

    Salt drops the in-flight job's return (the minion logs ``Skipping req for other master:
    cmd=_return master=127.0.0.2``), so that job stays ``delivered`` and the next one goes out after
    replay_wait (FAILOVER_REPLAY_WAIT here). A state run would not even finish: its file client
    waits 45 s for the dead master, then fails (hence cmd.run jobs).
    """
    ensure_up(mm, "beta")
    assert mm.connected_masters("beta") == ["m1"]
    mm.kill_minion("beta")
    prefix = "fd-"
    jids = [
        mm.salt_async("beta", "cmd.run", "sleep 3; " + mm.trace_cmd(f"fd-{i}"), "template=jinja", master="m1")
        for i in range(3)
    ]
    client = rds(mm)
    with FinalStates(mm, jids) as finals:
        mm.start_minion("beta")
        # stop m1 once beta acknowledged the first replay (it is running it): a publish m1 sent just
        # before dying may never reach the minion, and then m2 rightly sends it again (attempt 2)
        assert wait_for(lambda: client.hget(f"jr:{{{jids[0]}}}:retry", "d:beta"), 20, every=0.05), seq(mm)
        offset = mm.minion_log_offset("beta")
        mm.stop_master("m1")
        mm.wait_minion("beta", count=1, since=offset)  # its ready line from m2
        assert mm.connected_masters("beta") == ["m2"]
        want = [f"fd-{i} beta" for i in range(3)]
        mm.wait_lines("beta", lambda _: len(tagged(mm, "beta", prefix)) >= 3, FAILOVER_REPLAY_WAIT + 30)
        assert tagged(mm, "beta", prefix) == want, (mm.trace_lines("beta"), seq(mm))
        assert "went silent; taking over" in mm.master_log("m2")
        mm.start_master("m1")  # its engine must not send anything again
        time.sleep(SETTLE)
    assert tagged(mm, "beta", prefix) == want
    assert [mm.published_counts(j) for j in jids] == [{"m1": 2, "m2": 0}] + [{"m1": 1, "m2": 1}] * 2
    assert [beta_status(mm, j)["attempts"] for j in jids] == [1, 1, 1]
    # fd-0's return was dropped by Salt (see above): delivered, and never sent again (counts above)
    assert beta_status(mm, jids[0])["state"] in ("delivered", "returned")
    assert [beta_status(mm, j)["state"] for j in jids[1:]] == ["returned", "returned"]
    assert finals.seen == {jid: set() for jid in jids}, finals.seen
    assert stats_counter(mm, "interrupted") == 0


@profile("failback")
def test_failback_minion_is_served_through_the_master_it_moved_back_to(mm):
    """beta comes back on m2 (m1 is down) and m2 replays its backlog; m1 returns and beta fails back
    to it (same pid) while m2's engine lives and holds the sequence: the rest goes out through m1,
    m2 publishes nothing more, and every job runs once, in order."""
    ensure_up(mm, "beta")
    assert mm.connected_masters("beta") == ["m1"]
    mm.kill_minion("beta")
    prefix = "fb-"
    jids = [mm.publish_trace("beta", f"fb-{i}", master="m1") for i in range(5)]
    mm.stop_master("m1")
    with FinalStates(mm, jids) as finals:
        mm.start_minion("beta")  # m1 is down: it connects to m2
        assert mm.connected_masters("beta") == ["m2"]
        assert mm.wait_trace("beta", "fb-0", timeout=30) == 1
        offset = mm.minion_log_offset("beta")
        mm.start_master("m1")
        mm.wait_minion("beta", count=1, since=offset, timeout=60)  # its ready line from m1
        assert mm.connected_masters("beta") == ["m1"]
        want = [f"fb-{i} beta" for i in range(len(jids))]
        mm.wait_lines("beta", lambda _: len(tagged(mm, "beta", prefix)) >= len(jids), 60)
        time.sleep(SETTLE)
        assert tagged(mm, "beta", prefix) == want, (mm.trace_lines("beta"), seq(mm))  # each once, in order
        for jid in jids:
            assert wait_for(lambda jid=jid: beta_status(mm, jid)["state"] == "returned", 20), beta_status(mm, jid)
    # one replay per job, except the one m2 may have sent as beta left it: sent again through m1
    # under the same jid (beta drops a copy it already has)
    extra = [total_published(mm, jid) - 2 for jid in jids]
    assert all(e >= 0 for e in extra) and sum(extra) <= 1, [mm.published_counts(j) for j in jids]
    assert sum(mm.published_count(jid, "m1") for jid in jids) > len(jids)  # replays through m1 too
    assert finals.seen == {jid: set() for jid in jids}, finals.seen


# ------------------------------------------------------------------------------------- 5
@pytest.mark.skipif(salt_version() < (3008,), reason="--start-event acknowledgements are new in Salt 3008")
@profile("hot")
def test_master_restart_is_the_same_process_nothing_replayed_nothing_interrupted(mm):
    """beta acks a long job from m1; m1 restarts: a new start (same pid), no replay, no interrupted."""
    ensure_up(mm, "alpha", "beta")
    command = mm.trace_cmd("mr-0") + "; sleep 12"
    jid = mm.salt_async("beta", "cmd.run", command, "template=jinja", "--start-event", master="m1")
    assert mm.wait_trace("beta", "mr-0") == 1
    assert wait_for(lambda: beta_status(mm, jid)["state"] == "delivered", 15), beta_status(mm, jid)
    offset = len(mm.master_log("m1"))
    with FinalStates(mm, [jid]) as finals:
        mm.restart_master("m1")  # waits for alpha's and beta's ready line from m1
        # the restarted master's engine got beta's new start and knew the process
        assert wait_for(lambda: "beta connected" in mm.master_log("m1")[offset:], 15), mm.master_log("m1")[offset:]
        noted = re.findall(r"job_retry: beta connected \((\S+)\)", mm.master_log("m1")[offset:])
        assert noted and "new" not in noted, noted
        assert wait_for(lambda: beta_status(mm, jid)["state"] == "returned", 30), beta_status(mm, jid)
        time.sleep(SETTLE)
    assert mm.trace_count("beta", "mr-0") == 1
    assert mm.published_counts(jid) == {"m1": 1, "m2": 0}
    assert beta_status(mm, jid)["attempts"] == 0
    assert finals.seen == {jid: set()}, finals.seen
    assert stats_counter(mm, "interrupted") == 0


# ------------------------------------------------------------------------------------- 4
@profile("hot")
def test_frozen_engine_mid_sequence_is_adopted_by_the_other_master(mm):
    """The serving engine goes silent after the first replay: the other engine adopts beta after
    3 x claim_lease, asks it for its pid through its own master and continues the sequence."""
    ensure_up(mm, "alpha", "beta")
    mm.kill_minion("beta")
    prefix = "fz-"
    jids = [mm.publish_state("beta", f"fz-{i}", sleep=3, master="m1") for i in range(3)]
    frozen: list[int] = []
    try:
        with FinalStates(mm, jids) as finals:
            mm.start_minion("beta")
            assert wait_for(lambda: total_published(mm, jids[0]) == 2, 20, every=0.05)
            serving = master_of_engine(mm, seq(mm)["owner"])
            other = next(m for m in MASTERS if m != serving)
            frozen = mm.engine_pids(serving)
            assert len(frozen) == 1, frozen
            os.kill(frozen[0], signal.SIGSTOP)
            assert wait_for(lambda: "went silent; taking over" in mm.master_log(other), 20), mm.master_log(other)
            assert_replayed_once_in_order(mm, prefix, jids)
            assert master_of_engine(mm, seq(mm)["owner"]) == other
            # the jobs after the adoption went out through the other master
            originals = 1 if other == "m1" else 0
            assert [mm.published_counts(j)[other] - originals for j in jids[1:]] == [1, 1]
            # now kill the frozen engine: Salt restarts it (as "Engine"); it must not send anything again
            starts = engine_starts(mm, serving)
            os.kill(frozen.pop(), signal.SIGKILL)
            assert wait_for(lambda: engine_starts(mm, serving) > starts, 15), "Salt did not restart the engine"
            time.sleep(SETTLE)
        assert tagged(mm, "beta", prefix) == [f"fz-{i} beta" for i in range(3)]
        assert [total_published(mm, j) for j in jids] == [2, 2, 2]
        assert finals.seen == {jid: set() for jid in jids}, finals.seen
    finally:
        for pid in frozen:  # never leave a stopped process behind (teardown's SIGTERM would wait)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@profile("single")
def test_sigkilled_engine_is_restarted_by_salt_and_continues_the_sequence(mm):
    """SIGKILL of the engine while the first replay runs: Salt's process manager restarts it (same
    engine id, titled ``Engine``) at its next 10 s check; the restarted engine continues the sequence
    as soon as the replay in flight has returned, without resending it."""
    ensure_up(mm, "beta")
    mm.kill_minion("beta")
    prefix = "kill-"
    jids = [mm.publish_state("beta", f"kill-{i}", sleep=3) for i in range(3)]
    wait_swept(mm, jids)  # beta was down longer than `timeout`: no later sweep wakes its sequence
    mm.start_minion("beta")
    assert wait_for(lambda: total_published(mm, jids[0]) == 2, 20, every=0.05)
    # kill once the engine has put beta back on its work set to wait for that replay's return
    assert wait_for(lambda: (active_due_in(mm, "master") or 0) > 20, 10, every=0.02), seq(mm)
    starts = engine_starts(mm, "master")
    (pid,) = mm.engine_pids("master")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: engine_starts(mm, "master") > starts, 15), "Salt did not restart the engine"
    restarted_after = time.monotonic() - killed
    # Salt restarts it at most 10 s after the kill; the last two jobs take ~3.5 s each once sent
    want = [f"kill-{i} beta" for i in range(3)]
    mm.wait_lines("beta", lambda _: len(tagged(mm, "beta", prefix)) >= 3, 30 - restarted_after)
    assert tagged(mm, "beta", prefix) == want, (
        tagged(mm, "beta", prefix),
        f"restarted after {restarted_after:.1f} s; beta due in {active_due_in(mm, 'master')} s; seq {seq(mm)}",
    )
    time.sleep(SETTLE)
    assert tagged(mm, "beta", prefix) == want
    assert [total_published(mm, j) for j in jids] == [2, 2, 2]


@profile("single")
def test_restarted_engine_runs_on_a_quiet_bus(mm):
    """An engine Salt restarted heartbeats (and so sweeps and replays) without waiting for bus traffic."""
    mm.kill_minion("beta")  # nothing on the master bus from now on
    engine = engine_id(mm, "master")
    starts = engine_starts(mm, "master")
    for pid in mm.engine_pids("master"):
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: engine_starts(mm, "master") > starts, 15), "Salt did not restart the engine"
    time.sleep(3 * mm.master_config()["job_retry"]["claim_lease"])  # other engines would deem it dead now
    age = heartbeat_age(mm, engine)
    assert age < 2, f"last heartbeat of {engine} {age:.1f} s ago"


@pytest.mark.skipif(not os.path.exists(LIBFAKETIME), reason="Debian's libfaketime is not installed")
@profile("skew")
def test_a_master_an_hour_ahead_does_not_hide_a_missed_job(mm):
    """m2 stamps its jobs and starts an hour ahead of m1. beta missed a job published through m2;
    whichever master's start is noted, the job was published before it on Redis' clock: it runs
    once after the restart. A job published through m1 after the start is not replayed."""
    ensure_up(mm, "beta")
    mm.kill_minion("beta")
    ahead = mm.publish_trace("beta", "skew-ahead", tgt_type="list", master="m2")
    wait_swept(mm, [ahead])
    assert "off Redis'" in mm.master_log("m2")  # the engine saw its clock is off, and said so
    mm.start_minion("beta")
    assert mm.wait_trace("beta", "skew-ahead", timeout=30) == 1
    later = mm.publish_trace("beta", "skew-later", tgt_type="list", master="m1")
    assert mm.wait_trace("beta", "skew-later", timeout=30) == 1
    assert wait_for(lambda: beta_status(mm, ahead)["state"] == "returned", 30)
    time.sleep(SETTLE)
    assert mm.trace_count("beta", "skew-ahead") == 1 and mm.trace_count("beta", "skew-later") == 1
    assert total_published(mm, later) == 1
