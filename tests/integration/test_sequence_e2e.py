"""
The replay sequence on real daemons (README "How it works" 4-6, "Guarantees"): a minion that
comes back is owed its missed jobs one at a time, in publish order, each once; a replay refused
by a running state run (startup_states) is sent again, not lost; identical argument-less state
runs collapse to the newest one. What "ran" is read from the minion's trace file, in the order
the lines were written, and every test ends with a settle period in which nothing may run again.
"""

import itertools
import time

import pytest

from tests.saltlab import Lab, wait_for
from tests.saltlab import runner_status as status

SETTLE = 5  # seconds in which a duplicate would have to show up
_marks = itertools.count()


def mark(prefix):
    """A trace mark no other test of this module writes."""
    return f"{prefix}{next(_marks)}"


def beta_state(lab, jid):
    return status(lab, jid)["minions"]["beta"]


def pending(lab, minion="beta"):
    code, out = lab.run("job_retry.pending", minion)
    assert code == 0, out
    return out[minion]


def wait_pending(lab, jids, timeout=30):
    """Wait until the sweep queued every one of jids for beta; return the pending list."""
    entries = wait_for(lambda: (e := pending(lab)) and {x["jid"] for x in e} >= set(jids) and e, timeout=timeout)
    assert entries and {e["jid"] for e in entries} >= set(jids), f"not all of {jids} pending: {entries}"
    return entries


def lines_since(lab, base, minion="beta"):
    return lab.trace_lines(minion)[base:]


def wait_runs(lab, base, count, first=30, gap=15):
    """
    beta's trace since `base` once it has `count` lines, or as far as it got: the first line may
    take `first` s, each next one `gap` s after the one before (one at a time: the next job goes
    out when the previous one returned, not after replay_wait).
    """
    seen, deadline = 0, time.monotonic() + first
    while True:
        ran = lines_since(lab, base)
        if len(ran) >= count:
            return ran
        if len(ran) > seen:
            seen, deadline = len(ran), time.monotonic() + gap
        if time.monotonic() > deadline:
            return ran
        time.sleep(0.1)


def down_beta(lab):
    """beta killed (an instant outage); returns the trace length, to read what runs from now on."""
    if lab.minion_running("beta"):
        lab.kill_minion("beta")
    return len(lab.trace_lines("beta"))


def refusals(lab):
    code, out = lab.run("job_retry.stats")
    assert code == 0, out
    return out["refusals"]


def settle_and_check(lab, base, expected):
    """After SETTLE seconds beta's trace since `base` is exactly `expected`: nothing ran twice or late."""
    time.sleep(SETTLE)
    assert lines_since(lab, base) == expected, lab.root


@pytest.fixture(scope="module")
def lab():
    """Redis, a master with the returner and engine (timeout 5, interval 2), minion beta."""
    with Lab(minions=("beta",)) as running:
        yield running


# ------------------------------------------------------------------------------ 1. publish order


@pytest.mark.parametrize("count", [2, 3])
def test_missed_state_runs_run_once_each_in_publish_order(lab, count):
    base = down_beta(lab)
    marks = [mark("seq") for _ in range(count)]
    jids = [lab.publish_state("beta", m, sleep=3) for m in marks]
    assert all(beta_state(lab, jid)["state"] in ("waiting", "pending") for jid in jids)
    lab.start_minion("beta")
    expected = [f"{m} beta" for m in marks]
    assert wait_runs(lab, base, count) == expected
    for jid in jids:
        assert wait_for(lambda jid=jid: beta_state(lab, jid)["state"] == "returned"), status(lab, jid)
    assert pending(lab) == []
    settle_and_check(lab, base, expected)


# ------------------------------------------------------------------------------ 3. slow then quick


def test_slow_job_finishes_before_the_quick_one_behind_it_starts(lab):
    base = down_beta(lab)
    slow, quick = mark("slow"), mark("quick")
    slow_jid = lab.salt_async("beta", "cmd.run", "sleep 4; " + lab.trace_cmd(slow), "template=jinja")
    time.sleep(2)
    quick_jid = lab.salt_async("beta", "cmd.run", lab.trace_cmd(quick), "template=jinja")
    lab.start_minion("beta")
    expected = [f"{slow} beta", f"{quick} beta"]
    # Run together, the quick one would have written first.
    assert wait_runs(lab, base, 2) == expected
    for jid in (slow_jid, quick_jid):
        assert wait_for(lambda jid=jid: beta_state(lab, jid)["state"] == "returned"), status(lab, jid)
    settle_and_check(lab, base, expected)


# ------------------------------------------------------------------------------ 4. supersede


def test_identical_argumentless_state_runs_collapse_to_the_newest(lab):
    base = down_beta(lab)
    # No pillar: a mark would be an argument, and only argument-less state.apply supersedes.
    jids = []
    for _ in range(3):
        jids.append(lab.publish_highstate("beta", fun="state.apply"))
        time.sleep(1)
    older, newest = jids[:2], jids[2]
    entries = wait_pending(lab, jids)
    assert [e["jid"] for e in entries] == jids, entries
    by_jid = {e["jid"]: e for e in entries}
    for jid in older:
        assert by_jid[jid].get("superseded_by") == newest, entries
    assert "superseded_by" not in by_jid[newest], entries

    lab.start_minion("beta")
    assert wait_runs(lab, base, 1) == ["hs beta"]
    assert wait_for(lambda: beta_state(lab, newest)["state"] == "returned"), status(lab, newest)
    for jid in older:
        state = beta_state(lab, jid)
        assert state["state"] == "superseded" and state["superseded_by"] == newest, status(lab, jid)
    assert pending(lab) == []
    settle_and_check(lab, base, ["hs beta"])
    for jid in older:  # still superseded, never run late
        assert beta_state(lab, jid)["state"] == "superseded"


# ------------------------------------------------------------------------------ 5. pending order


def test_pending_lists_owed_jobs_in_publish_order(lab):
    base = down_beta(lab)
    first, second, third = mark("p"), mark("p"), mark("p")
    jids = [
        lab.publish_trace("beta", first),
        lab.publish_state("beta", second, sleep=1),
        lab.salt_async("beta", "cmd.run", lab.trace_cmd(third), "template=jinja"),
    ]
    entries = wait_pending(lab, jids)
    assert [e["jid"] for e in entries] == jids, entries
    assert [e["fun"] for e in entries] == ["cmd.run", "state.apply", "cmd.run"], entries
    assert all(e["state"] == "pending" and "superseded_by" not in e for e in entries), entries
    stamps = [e["published_at"] for e in entries]
    assert stamps == sorted(stamps), entries

    lab.start_minion("beta")
    expected = [f"{first} beta", f"{second} beta", f"{third} beta"]
    assert wait_runs(lab, base, 3) == expected
    for jid in jids:
        assert wait_for(lambda jid=jid: beta_state(lab, jid)["state"] == "returned"), status(lab, jid)
    settle_and_check(lab, base, expected)


# ------------------------------------------------------------------------------ 2. startup_states


@pytest.fixture(
    params=[
        pytest.param(("pid-in-start-event", 3), id="pid-in-start-event-3-jobs"),
        pytest.param(("pid-probed", 2), id="pid-probed-2-jobs"),
    ]
)
def startup_lab(request, tmp_path_factory):
    """
    (lab, number of missed jobs): beta runs ``startup_states: highstate`` (jr.hs, "hs beta") on every
    start. A pillar makes that highstate sleep 4 s, so the first replay reaches beta while it runs
    and is refused by Salt. One variant sends the pid in the start event, the other makes the
    engine ask for it. One test per lab: a stuck sequence must not leak into another test.
    """
    variant, count = request.param
    pillar = tmp_path_factory.mktemp("pillar")
    (pillar / "top.sls").write_text("base:\n  'beta':\n    - jr_slow\n")
    (pillar / "jr_slow.sls").write_text("sleep: 4\n")
    extra = {"startup_states": "highstate"}
    if variant == "pid-in-start-event":
        extra["start_event_grains"] = ["pid"]
    with Lab(
        minions=("beta",), minion_extra={"beta": extra}, master_extra={"pillar_roots": {"base": [str(pillar)]}}
    ) as running:
        # The first start's highstate: done before the test kills beta.
        assert running.wait_trace("beta", "hs", timeout=40) == 1, running.trace_lines("beta")
        yield running, count


def test_startup_highstate_and_missed_state_runs_each_run_once(startup_lab):
    lab, count = startup_lab
    base = down_beta(lab)
    refused_before = refusals(lab)
    marks = [mark("st") for _ in range(count)]
    jids = [lab.publish_state("beta", m, sleep=2) for m in marks]
    lab.start_minion("beta")
    # The replay colliding with the startup highstate is refused and re-sent (backoff 2, 4, 8 s).
    ran = wait_runs(lab, base, count + 1, first=30, gap=20)
    # The collision happened and was healed by a re-send (not avoided by luck of timing).
    assert refusals(lab) > refused_before, lab.master_log()[-4000:]
    assert ran.count("hs beta") == 1, ran
    assert [line for line in ran if line != "hs beta"] == [f"{m} beta" for m in marks], ran
    for jid in jids:
        assert wait_for(lambda jid=jid: beta_state(lab, jid)["state"] == "returned"), status(lab, jid)
    assert pending(lab) == []
    settle_and_check(lab, base, ran)
