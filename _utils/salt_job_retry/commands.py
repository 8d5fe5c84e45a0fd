"""
The runner's functions as plain data in, plain data out.

Every failure an operator can cause or meet (feature off, bad config, Redis
unreachable, unknown jid or minion) comes back as
``{"error": "...", "retcode": 1}`` so ``salt-run`` prints it and exits 1.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import saltside
from .config import Config, ConfigError
from .events import fire_action
from .recorder import valid_jid, valid_minion
from .redis_io import RedisUnavailable
from .replay import Replayer
from .store import Store, iso

log = logging.getLogger(__name__)


def error(message: str) -> dict:
    return {"error": message, "retcode": 1}


def invoke(opts: dict, context: dict, name: str, **kwargs: Any) -> dict:
    """Run command `name` with the master's config; every failure becomes an error dict."""
    try:
        conf = saltside.load_config(opts, context)
    except ConfigError as exc:
        return error(f"invalid configuration: {exc}")
    if not conf.enabled:
        return error("job_retry is disabled; set 'job_retry: {enabled: true}' in the master config")
    store = saltside.store_for(conf, context)
    try:
        return COMMANDS[name](Env(opts, conf, store), **kwargs)
    except RedisUnavailable as exc:
        return error(str(exc))


class Env:
    """What a command may use: config, store, and the Salt side (replaceable in tests)."""

    def __init__(self, opts: dict, conf: Config, store: Store):
        self.opts = opts
        self.conf = conf
        self.store = store
        self.fire = saltside.make_fire(opts)
        self.publish = saltside.make_publisher(opts)
        self.probe: Callable[[list[str], str, float], tuple[set[str], set[str]]] = lambda minions, jid, timeout: (
            saltside.probe(opts, minions, jid, timeout)
        )
        self.known_minions: Callable[[], set[str]] = lambda: saltside.accepted_minions(opts)
        self.new_jid: Callable[[], str] = lambda: saltside.new_jid(opts)


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def pending(env: Env, minion_id: str | None = None, fun: str | None = None) -> dict:
    """Queued jobs per minion; minion_id may be an id or a glob, fun a function glob."""
    if minion_id is not None and not is_glob(str(minion_id)) and not valid_minion(str(minion_id)):
        return error(f"invalid minion id {minion_id!r}")
    if minion_id is None or is_glob(str(minion_id)):
        queued = [m for m in env.store.queued_minions() if minion_id is None or fnmatch.fnmatchcase(m, minion_id)]
        if minion_id is not None and not queued and not fnmatch.filter(env.known_minions(), minion_id):
            return error(f"no minions matched the target {minion_id!r} (no accepted key, nothing pending)")
        listing = {m: jobs for m, jobs in env.store.pending(queued).items() if jobs}
    else:
        listing = env.store.pending([minion_id])
        if not listing[minion_id] and minion_id not in env.known_minions():
            return error(f"unknown minion {minion_id!r}: no accepted key and nothing pending")
    if fun is not None:
        listing = {m: [e for e in jobs if fnmatch.fnmatchcase(str(e["fun"]), fun)] for m, jobs in listing.items()}
        if minion_id is None or is_glob(str(minion_id)):
            listing = {m: jobs for m, jobs in listing.items() if jobs}
    return listing


def flush(env: Env, minion_id: str, jid: str | None = None, dry_run: bool = False) -> dict:
    """Cancel what minions are owed; minion_id may be a glob. dry_run only reports."""
    minion_id = str(minion_id)
    if not is_glob(minion_id) and not valid_minion(minion_id):
        return error(f"invalid minion id {minion_id!r}")
    if jid is not None and not valid_jid(str(jid)):
        return error(f"invalid jid {jid!r}")
    jids = [str(jid)] if jid is not None else None
    if jids and env.store.job(jids[0]) is None:
        return error(f"unknown jid {jid}: nothing recorded (never seen, or expired after ttl)")
    if is_glob(minion_id):
        # accepted minions too: a job not swept yet is owed to a minion that has no queue
        known = set(env.store.queued_minions()) | env.known_minions()
        minions = sorted(m for m in known if fnmatch.fnmatchcase(m, minion_id))
        if not minions:
            return error(f"no minions matched the target {minion_id!r} (no accepted key, nothing pending)")
    elif minion_id in env.known_minions() or env.store.pending([minion_id])[minion_id]:
        minions = [minion_id]
    else:
        return error(f"unknown minion {minion_id!r}: no accepted key and nothing pending")
    # what each may be owed, found for a chunk of minions at once (not minions x unswept jobs)
    owed: dict[str, list[str]] = {}
    if jids is None:
        for i in range(0, len(minions), FLUSH_CHUNK):
            owed.update(env.store.owed_candidates(minions[i : i + FLUSH_CHUNK]))
    if dry_run:  # the flush's own script, told not to write: exactly what it would cancel
        would = {m: js for m in minions if (js := env.store.flush(m, jids or owed[m], dry_run=True))}
        return {"dry_run": True, "minions": would, "flushed": sum(len(js) for js in would.values())}
    flushed: dict[str, list[str]] = {}
    for done, minion in enumerate(minions, 1):
        cancelled = env.store.flush(minion, jids or owed[minion])
        if cancelled:
            flushed[minion] = cancelled
        if done % PROGRESS_EVERY == 0 or done == len(minions) > PROGRESS_EVERY:
            fire_progress(env, "flush", done, len(minions))
    if not is_glob(minion_id):
        return {"minion": minion_id, "flushed": len(flushed.get(minion_id, [])), "jids": flushed.get(minion_id, [])}
    return {"minions": flushed, "flushed": sum(len(js) for js in flushed.values())}


PROGRESS_EVERY = 100
FLUSH_CHUNK = 500  # minions whose candidates are looked up together


def fire_progress(env: Env, action: str, done: int, total: int | None = None) -> None:
    """salt/job_retry/progress/<action>: how far a long runner call has got."""
    try:
        env.fire({"action": action, "done": done, "total": total}, f"salt/job_retry/progress/{action}")
    except Exception:  # progress is a courtesy
        log.debug("job_retry: could not fire a progress event", exc_info=True)


def stats(env: Env, format: str = "data") -> dict | str:
    """Counts as data, or Prometheus text exposition with format=prometheus."""
    counts = env.store.stats()
    if format == "prometheus":
        return prometheus(counts)
    if format != "data":
        return error(f"unknown format {format!r}: use data or prometheus")
    return counts


def prometheus(counts: dict) -> str:
    metrics = [
        ("tracked_jobs", "gauge", "Jobs recorded and not expired."),
        ("unswept_jobs", "gauge", "Jobs younger than timeout or not yet swept."),
        ("minions_replaying", "gauge", "Minions whose replay sequence an engine is serving."),
        ("pending_total", "gauge", "(jid, minion) pairs queued for replay."),
        ("oldest_pending_age_seconds", "gauge", "Age of the oldest queued (jid, minion) pair."),
        ("queued", "counter", "Pairs queued by the sweep."),
        ("replays", "counter", "Replays published."),
        ("refusals", "counter", "Replays sent again after a state run refused them."),
        ("superseded", "counter", "Pairs not replayed because a newer identical job was owed."),
        ("exhausted", "counter", "Pairs given up after max_attempts."),
        ("interrupted", "counter", "Pairs acknowledged and cut short by a restart."),
    ]
    lines = []
    for name, kind, help_text in metrics:
        metric = f"salt_job_retry_{name}{'_total' if kind == 'counter' else ''}"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", f"{metric} {counts[name]}"]
    lines += [
        "# HELP salt_job_retry_pending Pairs queued for replay, by minion.",
        "# TYPE salt_job_retry_pending gauge",
    ]
    for minion, n in counts["pending_by_minion"].items():
        label = minion.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'salt_job_retry_pending{{minion="{label}"}} {n}')
    return "\n".join(lines) + "\n"


def retry(env: Env, jid: str) -> dict:
    jid = str(jid)
    job, problem = _tracked_job(env, jid)
    if problem:
        return problem
    missing = env.store.missing(jid)
    if not missing:
        return {
            "jid": jid,
            "published": [],
            "queued": [],
            "comment": "every targeted minion returned; nothing to retry",
        }
    idle, running = env.probe(missing, jid, env.conf.retry_ping_timeout)
    idle -= running
    # A fresh jid: a minion process that saw the original jid would drop a same-jid publish.
    fresh = env.new_jid() if idle else ""
    if fresh:
        env.store.register_alias(fresh, jid)
    claim = env.store.prepare_retry(jid, sorted(set(missing) - running), idle, fresh)
    result: dict[str, Any] = {
        "jid": jid,
        "retry_jid": fresh if claim.claimed else None,
        "published": [],
        # running it, or sent it less than replay_wait ago (a replay, another retry): left alone
        "running": sorted(running | set(claim.busy)),
        "queued": sorted(set(claim.reset) - set(claim.claimed)),
    }
    for minion in claim.claimed:
        try:
            env.publish(minion, fresh, job, 0, {"orig_jid": jid})
        except Exception as exc:  # owed again: the engine sends it (under the same fresh jid)
            log.error("job_retry: retry of %s to %s failed: %s", jid, minion, exc)
            env.store.release(jid, minion, "attempt")
            env.store.wake([minion], None)
            result["queued"].append(minion)
            continue
        fire_action(env.fire, "replayed", jid, minion, fun=job.get("fun"), attempt=0, retry_jid=fresh)
        result["published"].append(minion)
    for minion in result["queued"]:
        fire_action(env.fire, "queued", jid, minion, fun=job.get("fun"))
    result["queued"].sort()
    return result


def enqueue(env: Env) -> dict:
    swept = [0]

    def progress(jobs: int) -> None:
        swept[0] += jobs
        fire_progress(env, "enqueue", swept[0])

    queued = Replayer(env.store, env.conf, env.publish, env.fire, env.new_jid).sweep(progress)
    by_jid: dict[str, list[str]] = {}
    for jid, minion, _ in queued:
        by_jid.setdefault(jid, []).append(minion)
    return {"queued": {jid: sorted(minions) for jid, minions in by_jid.items()}, "count": len(queued)}


def status(env: Env, jid: str) -> dict:
    jid = str(jid)
    if not valid_jid(jid):
        return error(f"invalid jid {jid!r}")
    found = env.store.status(jid)
    if found is None:
        return error(f"unknown jid {jid}: nothing recorded (never seen, or expired after ttl)")
    job = found["job"]
    out = {
        "jid": jid,
        "fun": job.get("fun"),
        "arg": job.get("arg", []),
        "tgt": job.get("tgt"),
        "tgt_type": job.get("tgt_type"),
        "user": job.get("user"),
        "published_at": iso(job.get("time", 0)),
    }
    if job.get("excluded"):
        return {**out, "excluded": True, "comment": f"{job.get('fun')} matches exclude_functions; never replayed"}
    if job.get("too_large"):
        size, limit = job["too_large"], env.conf.max_job_bytes
        comment = f"not recorded: arguments are {size} bytes packed, over max_job_bytes ({limit})"
        return {**out, "recorded": False, "comment": comment}
    minions = found["minions"]
    return {**out, "summary": dict(Counter(s["state"] for s in minions.values())), "minions": minions}


def _tracked_job(env: Env, jid: str) -> tuple[dict | None, dict | None]:
    if not valid_jid(jid):
        return None, error(f"invalid jid {jid!r}")
    job = env.store.job(jid)
    if job is None:
        return None, error(f"unknown jid {jid}: nothing recorded (never seen, or expired after ttl)")
    if job.get("excluded"):
        return None, error(f"job {jid} runs {job.get('fun')}, which exclude_functions excludes; not retried")
    if job.get("too_large"):
        return None, error(f"job {jid} was not recorded (arguments over max_job_bytes); cannot retry it")
    return job, None


COMMANDS: dict[str, Callable[..., dict]] = {
    "pending": pending,
    "flush": flush,
    "retry": retry,
    "enqueue": enqueue,
    "status": status,
    "stats": stats,
}
