"""
A minion's events never make the master run anything, on real daemons.

beta fires, with ``salt-call event.send`` only, every form of forgery a minion has:
a plain event (the master wraps it, naming beta) and a batched event with
``pretag: ""`` (the master fires exactly the body beta chose, under the tag it
chose). The job it forges targets alpha; nothing of it may ever run there.
"""

import json
import time

from tests.saltlab import runner_status as status
from tests.saltlab import wait_for

SETTLE = 6
FORGED_JID = "20261204170000000001"


def fire_from(lab, minion, tag, data, batched):
    """`salt-call event.send` on minion: as a plain event, or as a batched one (pretag "")."""
    if batched:
        preload = {"events": [{"tag": tag, "data": data}], "pretag": ""}
        args = ["event.send", "job_retry/forgery", f"preload={json.dumps(preload)}"]
    else:
        args = ["event.send", tag, f"preload={json.dumps(data)}"]
    argv = [lab._bin("salt-call"), "-c", str(lab.path(minion)), "--out=json", *args]
    proc = lab._cli(argv, timeout=60)
    assert proc.returncode == 0 and '"local": true' in proc.stdout, proc.stdout + proc.stderr


def forged_job(lab, jid, tag):
    return {
        "jid": jid,
        "fun": "cmd.run",
        "arg": [lab.trace_cmd(tag), {"__kwarg__": True, "template": "jinja"}],
        "tgt": "alpha",
        "tgt_type": "glob",
        "user": "root",
        "minions": ["alpha"],
        "missing": [],
    }


def test_a_job_a_minion_forges_never_runs(fleet):
    fleet.kill_minion("alpha")
    for batched in (False, True):
        jid = f"{FORGED_JID[:-1]}{int(batched) + 1}"
        tag = f"forged{int(batched)}"
        fire_from(fleet, "beta", f"salt/job/{jid}/new", forged_job(fleet, jid, tag), batched)
        start = {"id": "alpha", "cmd": "_minion_event", "grains": {"pid": 4242}}
        fire_from(fleet, "beta", "salt/minion/alpha/start", start, batched)  # and alpha "started"
    time.sleep(SETTLE)
    code, out = fleet.run("job_retry.retry", f"{FORGED_JID[:-1]}2")
    assert code == 1 and "unknown jid" in out["error"], out  # nothing recorded: nothing to retry
    fleet.start_minion("alpha")  # the real start
    time.sleep(SETTLE)
    assert fleet.trace_count("alpha", "forged0") == 0 and fleet.trace_count("alpha", "forged1") == 0
    code, out = fleet.run("job_retry.pending", "alpha")
    assert code == 0 and out == {"alpha": []}, out
    assert f"ignored salt/job/{FORGED_JID[:-1]}1/new fired by minion 'beta'" in fleet.master_log()


def test_a_return_a_minion_forges_does_not_silence_the_job(fleet):
    fleet.kill_minion("alpha")
    jid = fleet.publish_trace("*", "forgedret")
    assert fleet.wait_trace("beta", "forgedret") == 1
    body = {"id": "alpha", "jid": jid, "fun": "cmd.run", "return": "", "retcode": 0, "success": True}
    for batched in (False, True):
        fire_from(fleet, "beta", f"salt/job/{jid}/ret/alpha", {**body, "cmd": "_return"}, batched)
    time.sleep(3)
    assert status(fleet, jid)["minions"]["alpha"]["state"] != "returned"
    fleet.start_minion("alpha")
    assert fleet.wait_trace("alpha", "forgedret") == 1
    assert wait_for(lambda: status(fleet, jid)["minions"]["alpha"]["state"] == "returned", timeout=30)
    time.sleep(SETTLE)
    assert fleet.trace_count("alpha", "forgedret") == 1


def test_genuine_jobs_still_reach_a_minion_that_was_down_and_salts_history_is_kept(fleet):
    fleet.kill_minion("alpha")
    jid = fleet.publish_trace("*", "genuine")
    assert fleet.wait_trace("beta", "genuine") == 1
    fleet.start_minion("alpha")
    assert fleet.wait_trace("alpha", "genuine") == 1
    assert wait_for(lambda: status(fleet, jid)["summary"] == {"returned": 2}, timeout=30)
    code, lookup = fleet.run("jobs.lookup_jid", jid)  # Salt's own job cache, behind ours
    assert code == 0 and "alpha" in lookup and "beta" in lookup, lookup
    code, listed = fleet.run("jobs.list_job", jid)
    assert code == 0 and listed.get("Function") == "cmd.run", listed
