"""
The oracle: what the README promises, checked against one finished (quiesced) history.

Each check returns violations as short strings naming the job by its trace label. The
README's documented limits are encoded where they apply, each with a comment citing it:
a check that pretends a limit away would only report the limit.
"""

from __future__ import annotations

from .world import TRUSTED_SUPPORTED, Job, Run, World

FINAL_OK = ("flushed", "superseded", "exhausted", "interrupted")


def check(w: World) -> list[str]:
    out: list[str] = []
    out += nothing_forged_ran(w)
    out += at_most_once(w)
    out += delivered(w)
    out += in_order(w)
    out += no_loops(w)
    out += every_key_has_a_ttl(w)
    return out


def runs_of(w: World) -> dict[tuple[str, str], list[Run]]:
    by_pair: dict[tuple[str, str], list[Run]] = {}
    for run in w.runs:
        by_pair.setdefault((run.orig, run.minion), []).append(run)
    return by_pair


def nothing_forged_ran(w: World) -> list[str]:
    return [
        f"forged job {w.name(r.orig)} ran on {r.minion} ({r.kind})"
        for r in w.runs
        if w.jobs.get(r.orig) and w.jobs[r.orig].forged
    ]


def at_most_once(w: World) -> list[str]:
    """
    A (job, minion) runs once. A second run is allowed only where the README says so:
    - at-least-once without an ack: a process that died (or lost its master) before its return
      was recorded may have the job replayed to the next process ("Without the ack ... replayed
      by its next process — at-least-once, at most max_attempts + 1 runs"); with the ack
      recorded before the re-send it must be `interrupted` instead;
    - an operator's `retry` after the earlier run reopens the pair (explicit re-run);
    - never twice in one process.
    """
    out = []
    for (jid, minion), runs in runs_of(w).items():
        if w.jobs.get(jid) and w.jobs[jid].forged:
            continue
        for prev, nxt in zip(runs, runs[1:], strict=False):
            label = f"{w.name(jid)} on {minion}"
            if any(prev.t <= t <= nxt.t and r == jid for t, r in w.retries):
                continue
            if prev.pid == nxt.pid:
                out.append(f"{label}: ran twice in process {prev.pid} (at {prev.t - w.runs[0].t:.1f}s and later)")
                continue
            if prev.returned_at is not None and prev.returned_at <= nxt.t:
                out.append(f"{label}: ran again in pid {nxt.pid} after its return was recorded")
                continue
            acked = w.acked.get((prev.pub, minion, prev.pid))
            if acked is not None and acked <= nxt.t and not w.conf.replay_interrupted:
                out.append(f"{label}: acked by pid {prev.pid}, yet ran again in pid {nxt.pid} (not interrupted)")
        limit = w.conf.max_attempts + 1 + sum(1 for _, r in w.retries if r == jid)
        if len(runs) > limit:
            out.append(f"{w.name(jid)} on {minion}: ran {len(runs)} times (limit {limit})")
    return out


def owed(w: World, job: Job, minion: str) -> bool:
    """
    Salt delivered it (the minion's process was connected to the publishing master), or the
    minion (re)connected after the publish: "a returning minion gets what it would have got".
    A failover minion connected elsewhere that never reconnects never "returns": not owed.
    """
    if minion in job.received:
        return True
    return any(t > job.t for t, _, _, _ in w.minions[minion].starts)


def start_seen_after(w: World, job: Job, minion: str) -> bool:
    """Whether an engine got a start of the minion after the job's publish (diagnosis only)."""
    return any(t > job.t and seen for t, _, _, seen in w.minions[minion].starts)


def delivered(w: World) -> list[str]:
    """
    After quiescence, every owed pair of a tracked job ran, or is final for a reason the
    history shows (flushed by the operator, superseded by a newer identical job that ran,
    exhausted after max_attempts publishes or max_refusals refusals, interrupted after an
    ack by a process that died). And `status` says `returned` only for a pair that ran.
    """
    out = []
    store = next(iter(w.masters.values())).store
    runs = runs_of(w)
    for job in w.jobs.values():
        if job.forged:
            continue
        status = store.status(job.jid)
        tracked = job.fun != "test.ping"  # excluded functions are never queued
        for minion in job.targets:
            ran = runs.get((job.jid, minion), [])
            state = (status or {}).get("minions", {}).get(minion, {}).get("state", "unknown")
            label = f"{job.label} ({job.fun}) on {minion}"
            if state == "returned" and not ran:
                out.append(f"{label}: status says returned, but it never ran")
            if not tracked or ran or not owed(w, job, minion):
                continue
            if state in FINAL_OK:
                problem = final_unexplained(w, job, minion, state, status["minions"][minion])
                if problem:
                    out.append(f"{label}: {state} but {problem}")
                continue
            where = tag(w, job, minion)
            out.append(f"{label}: owed (received={minion in job.received}), never ran; status {state}{where}")
    return out


def tag(w: World, job: Job, minion: str) -> str:
    """The known finding (tests/sim/FINDINGS.md) a lost pair matches, if any."""
    lost = [p for p in w.publishes if p.orig == job.jid and p.minion == minion and p.delivered == "not-connected"]
    if lost:
        return f" [F2: published through {lost[0].master}, which the minion had left]"
    if minion not in job.received and not start_seen_after(w, job, minion):
        return " [F1: no engine got a start of it since]"
    return ""


def no_loops(w: World) -> list[str]:
    """At most max_attempts replays and max_refusals re-sends per (job, minion) (README: No loops)."""
    out = []
    count: dict[tuple[str, str], int] = {}
    for p in w.publishes:
        count[(p.orig, p.minion)] = count.get((p.orig, p.minion), 0) + 1
    limit = w.conf.max_attempts + w.conf.max_refusals
    for (jid, minion), n in count.items():
        if n > limit and not any(r == jid for _, r in w.retries):
            out.append(f"{w.name(jid)} on {minion}: published {n} times (max_attempts + max_refusals = {limit})")
    return out


def final_unexplained(w: World, job: Job, minion: str, state: str, info: dict) -> str:
    if state == "flushed":
        return "" if (job.jid, minion) in w.flushed else "no operator flush cancelled it"
    if state == "superseded":
        # follow the chain: j1 superseded by j2, itself superseded later by j3, which ran
        store = next(iter(w.masters.values())).store
        seen = {job.jid}
        by = info.get("superseded_by", "")
        while True:
            newer = w.jobs.get(by)
            if newer is None or newer.t < job.t or (newer.fun, newer.arg) != (job.fun, job.arg) or by in seen:
                return f"superseded by {w.name(by)}, not a newer identical job"
            if any(r.orig == by and r.minion == minion for r in w.runs):
                return ""
            seen.add(by)
            nxt = (store.status(by) or {}).get("minions", {}).get(minion, {})
            if nxt.get("state") in FINAL_OK and nxt.get("state") != "superseded":
                # the newest identical job ended final itself (e.g. exhausted by refusals):
                # fine if that is explained, as nothing older is sent in its place by design
                problem = final_unexplained(w, newer, minion, nxt["state"], nxt)
                return f"superseded by {w.name(by)}, {nxt['state']} but {problem}" if problem else ""
            if nxt.get("state") != "superseded":
                return f"superseded by {w.name(by)}, which never ran there (it is {nxt.get('state')})"
            by = nxt.get("superseded_by", "")
    sent = [p for p in w.publishes if p.orig == job.jid and p.minion == minion]
    if state == "exhausted":
        refused = sum(1 for p in sent if p.delivered == "refused")
        if len(sent) >= w.conf.max_attempts or refused >= w.conf.max_refusals:
            return ""
        return f"only {len(sent)} publish(es), {refused} refusal(s)"
    if state == "interrupted":
        died = [r for r in w.runs if r.orig == job.jid and r.minion == minion and r.died]
        return "" if died else "no run of it was cut short by a restart"
    return ""


def in_order(w: World) -> list[str]:
    """
    Per minion process, the replays it ran went out in publish order. Not checked, as the
    README allows them to differ:
    - live jobs (Salt delivered them; "a live job published while a backlog is replayed may
      run before the backlog" — live runs are simply not part of the replay sequence);
    - re-sends after a refusal and after replay_wait without an ack (fresh jids): "a state run
      that meets another is refused and sent again, so state runs keep their order only up to
      that point";
    - an operator's retry (published at once, by design);
    - a pair that was ever refused on that minion, for the same reason.
    """
    out = []
    refused = {(p.orig, p.minion) for p in w.publishes if p.delivered == "refused"}
    by_proc: dict[tuple[str, int], list[Run]] = {}
    for run in w.runs:
        if run.kind == "replay" and run.pub == run.orig and (run.orig, run.minion) not in refused:
            by_proc.setdefault((run.minion, run.pid), []).append(run)
    for (minion, pid), runs in by_proc.items():
        for prev, nxt in zip(runs, runs[1:], strict=False):
            a, b = w.jobs.get(prev.orig), w.jobs.get(nxt.orig)
            if a and b and b.t < a.t:
                out.append(f"{minion} pid {pid}: replayed {a.label} before the older {b.label}")
    return out


def every_key_has_a_ttl(w: World) -> list[str]:
    client = next(iter(w.masters.values())).store.client
    return [f"key {k.decode()} has no TTL" for k in client.scan_iter(count=1000) if client.ttl(k) == -1]


def mode() -> str:
    return "trusted job cache" if TRUSTED_SUPPORTED else "event_return records everything (pre-trust)"
