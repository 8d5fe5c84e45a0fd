"""
End to end on real daemons: redis-server, salt-master with the returner and the
engine, two salt-minions. A job "ran" only if its trace line is on disk.
"""

import threading
import time

import pytest

from tests.saltlab import runner_status as status
from tests.saltlab import salt_version, wait_for

SETTLE = 5  # seconds to wait for a duplicate that must not come


def pending_jids(lab, minion):
    code, out = lab.run("job_retry.pending", minion)
    assert code == 0, out
    return [entry["jid"] for entry in out[minion]]


def test_down_minion_gets_the_job_once_after_the_sweep(fleet):
    fleet.kill_minion("beta")
    jid = fleet.publish_trace("*", "sweep")
    assert fleet.wait_trace("alpha", "sweep") == 1
    # timeout 5 s + engine sweep every 2 s: the job shows up as pending for beta
    assert wait_for(lambda: jid in pending_jids(fleet, "beta"), timeout=20)
    assert status(fleet, jid)["minions"]["beta"]["state"] == "pending"
    fleet.start_minion("beta")
    assert fleet.wait_trace("beta", "sweep") == 1
    time.sleep(SETTLE)
    assert fleet.trace_count("beta", "sweep") == 1
    assert fleet.trace_count("alpha", "sweep") == 1
    assert wait_for(lambda: status(fleet, jid)["minions"]["beta"]["state"] == "returned")
    assert pending_jids(fleet, "beta") == []
    # the late result is filed under the job the operator published
    code, lookup = fleet.run("jobs.lookup_jid", jid)
    assert code == 0 and "beta" in lookup and "alpha" in lookup, lookup


def test_minion_back_before_the_sweep_still_gets_it(fleet):
    fleet.kill_minion("beta")
    jid = fleet.publish_trace("*", "early")
    assert status(fleet, jid)["minions"]["beta"]["state"] == "waiting"  # not swept yet
    fleet.start_minion("beta")
    assert fleet.wait_trace("beta", "early") == 1
    time.sleep(SETTLE)
    assert fleet.trace_count("beta", "early") == 1


def test_minion_that_returned_never_runs_it_again(fleet):
    jid = fleet.publish_trace("*", "once")
    for name in ("alpha", "beta"):
        assert fleet.wait_trace(name, "once") == 1
    assert wait_for(lambda: status(fleet, jid)["summary"] == {"returned": 2})
    for _ in range(2):
        fleet.kill_minion("alpha")
        fleet.start_minion("alpha")
    fleet.restart_master()  # every minion reconnects and fires a start event
    time.sleep(SETTLE)
    assert fleet.trace_count("alpha", "once") == 1
    assert fleet.trace_count("beta", "once") == 1


def test_flush_cancels_what_a_minion_is_owed(fleet):
    fleet.kill_minion("beta")
    jid = fleet.publish_trace("*", "flushme")
    assert wait_for(lambda: jid in pending_jids(fleet, "beta"), timeout=20)
    code, out = fleet.run("job_retry.flush", "beta")
    assert code == 0 and jid in out["jids"], out
    fleet.start_minion("beta")
    time.sleep(SETTLE)
    assert fleet.trace_count("beta", "flushme") == 0
    assert status(fleet, jid)["minions"]["beta"]["state"] == "flushed"


def test_retry_republishes_to_connected_and_queues_the_rest(fleet):
    fleet.kill_minion("beta")
    jid = fleet.publish_trace("*", "retry")
    fleet.run("job_retry.flush", "beta")  # nothing automatic: only the operator's retry
    code, out = fleet.run("job_retry.retry", jid)
    assert code == 0 and out["queued"] == ["beta"] and out["published"] == [], out
    fleet.start_minion("beta")  # the retry re-queued it: the engine replays on start
    assert fleet.wait_trace("beta", "retry") == 1

    jid2 = fleet.publish_trace("alpha", "retry2")
    assert fleet.wait_trace("alpha", "retry2") == 1
    assert wait_for(lambda: status(fleet, jid2)["minions"]["alpha"]["state"] == "returned")
    # alpha returned, so retry has nothing to do ...
    code, out = fleet.run("job_retry.retry", jid2)
    assert code == 0 and out["published"] == [], out


def test_retry_reaches_a_connected_minion_that_saw_the_jid(fleet):
    fleet.kill_minion("beta")
    jid = fleet.publish_trace("*", "connected")
    fleet.run("job_retry.flush", "beta")
    fleet.start_minion("beta")
    time.sleep(2)
    assert fleet.trace_count("beta", "connected") == 0
    code, out = fleet.run("job_retry.retry", jid)
    assert code == 0 and out["published"] == ["beta"] and out["retry_jid"] != jid, out
    assert fleet.wait_trace("beta", "connected") == 1
    assert wait_for(lambda: status(fleet, jid)["minions"]["beta"]["state"] == "returned")
    assert fleet.trace_count("alpha", "connected") == 1


def test_retry_is_idempotent_while_its_run_is_in_flight(fleet):
    """Three retries of a job beta missed: the first runs it (under a fresh jid), the one issued while
    it is being published and the one issued while it runs find it in flight; it runs once."""
    fleet.kill_minion("beta")
    command = fleet.trace_cmd("idem") + "; sleep 8"
    jid = fleet.salt_async("*", "cmd.run", command, "template=jinja")
    fleet.run("job_retry.flush", "beta")  # nothing automatic: only the operator's retry
    fleet.start_minion("beta")
    time.sleep(2)
    results = {}

    def retry(name):
        results[name] = fleet.run("job_retry.retry", jid)

    both = [threading.Thread(target=retry, args=(n,)) for n in ("a", "b")]
    for t in both:
        t.start()
    for t in both:
        t.join()
    outs = [out for code, out in results.values() if code == 0]
    assert len(outs) == 2, results
    assert sorted(len(out["published"]) for out in outs) == [0, 1], outs
    assert fleet.wait_trace("beta", "idem") == 1
    code, out = fleet.run("job_retry.retry", jid)  # still running (sleep 8), and alpha may still run its own
    assert code == 0 and out["published"] == [] and "beta" in out["running"], out
    assert wait_for(lambda: status(fleet, jid)["minions"]["beta"]["state"] == "returned", timeout=30)
    time.sleep(SETTLE)
    assert fleet.trace_count("beta", "idem") == 1


def test_retry_leaves_a_minion_running_the_original_alone(fleet):
    """No replay was ever sent: only saltutil.running can tell that beta is still running the job."""
    command = fleet.trace_cmd("slowrun") + "; sleep 10"
    jid = fleet.salt_async("beta", "cmd.run", command, "template=jinja")
    assert fleet.wait_trace("beta", "slowrun") == 1
    code, out = fleet.run("job_retry.retry", jid)
    assert code == 0 and out["running"] == ["beta"] and out["published"] == [], out
    assert wait_for(lambda: status(fleet, jid)["minions"]["beta"]["state"] == "returned", timeout=30)
    assert fleet.trace_count("beta", "slowrun") == 1


@pytest.mark.skipif(salt_version() < (3008,), reason="--start-event acknowledgements are new in Salt 3008")
def test_acked_job_cut_short_by_a_restart_is_interrupted_not_rerun(fleet):
    # --start-event: beta acknowledges, then runs a long job; it restarts before returning
    command = fleet.trace_cmd("acked") + "; sleep 60"
    jid = fleet.salt_async("beta", "cmd.run", command, "template=jinja", "--start-event")
    assert fleet.wait_trace("beta", "acked") == 1
    assert wait_for(lambda: status(fleet, jid)["minions"]["beta"]["state"] == "delivered", timeout=15)
    fleet.run("job_retry.enqueue")
    assert jid not in pending_jids(fleet, "beta")  # acknowledged: running, not missing
    fleet.kill_minion("beta")
    fleet.start_minion("beta")
    assert wait_for(lambda: status(fleet, jid)["minions"]["beta"]["state"] == "interrupted", timeout=15)
    time.sleep(SETTLE)
    assert fleet.trace_count("beta", "acked") == 1  # replay_interrupted is off by default


@pytest.mark.parametrize("bad", ["20990101000000000000", "not-a-jid!"])
def test_runner_errors_exit_non_zero(fleet, bad):
    code, out = fleet.run("job_retry.status", bad)
    assert code == 1 and "error" in out
    code, out = fleet.run("job_retry.pending", "no-such-minion")
    assert code == 1 and "unknown minion" in out["error"]


def test_stats_and_prometheus_through_salt_run(fleet):
    code, counts = fleet.run("job_retry.stats")
    assert code == 0 and counts["tracked_jobs"] >= 1 and "pending_by_minion" in counts, counts
    proc = fleet._cli(
        [fleet._bin("salt-run"), "-c", fleet.master_dir, "job_retry.stats", "format=prometheus", "--out=txt"],
        timeout=60,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0].startswith("# HELP salt_job_retry_tracked_jobs"), proc.stdout
    assert any(line.startswith("salt_job_retry_replays_total ") for line in lines)
