"""
The runner's functions as plain data in, plain data out.

Every failure an operator can cause or meet (feature off, bad config, Redis
unreachable, unknown jid or minion) comes back as
``{"error": "...", "retcode": 1}`` so ``salt-run`` prints it and exits 1.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import saltside
from .config import Config, ConfigError
from .recorder import valid_jid, valid_minion
from .replay import Replayer, fire_action
from .store import RedisUnavailable, Store, iso

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


def pending(env: Env, minion_id: str | None = None) -> dict:
    if minion_id is None:
        queued = env.store.queued_minions()
        return {m: jobs for m, jobs in env.store.pending(queued).items() if jobs}
    if not valid_minion(minion_id):
        return error(f"invalid minion id {minion_id!r}")
    listing = env.store.pending([minion_id])
    if not listing[minion_id] and minion_id not in env.known_minions():
        return error(f"unknown minion {minion_id!r}: no accepted key and nothing pending")
    return listing


def flush(env: Env, minion_id: str, jid: str | None = None) -> dict:
    if not valid_minion(minion_id):
        return error(f"invalid minion id {minion_id!r}")
    if jid is not None and not valid_jid(str(jid)):
        return error(f"invalid jid {jid!r}")
    jids = [str(jid)] if jid is not None else None
    if jids and env.store.job(jids[0]) is None:
        return error(f"unknown jid {jid}: nothing recorded (never seen, or expired after ttl)")
    flushed = env.store.flush(minion_id, jids)
    if not flushed and jids is None and minion_id not in env.known_minions():
        return error(f"unknown minion {minion_id!r}: no accepted key and nothing pending")
    return {"minion": minion_id, "flushed": len(flushed), "jids": flushed}


def retry(env: Env, jid: str) -> dict:
    jid = str(jid)
    job, problem = _tracked_job(env, jid)
    if problem:
        return problem
    missing = env.store.prepare_retry(jid)
    if not missing:
        return {
            "jid": jid,
            "published": [],
            "queued": [],
            "comment": "every targeted minion returned; nothing to retry",
        }
    idle, running = env.probe(missing, jid, env.conf.retry_ping_timeout)
    result: dict[str, Any] = {
        "jid": jid,
        "retry_jid": None,
        "published": [],
        "running": sorted(running),  # still running the job: left alone, it will return
        "queued": sorted(set(missing) - idle - running),
    }
    if idle:
        # A fresh jid: a minion process that saw the original jid would drop a same-jid publish.
        fresh = env.new_jid()
        env.store.register_alias(fresh, jid)
        for minion in sorted(idle):
            try:
                env.publish(minion, fresh, job, 0, {"orig_jid": jid})
            except Exception as exc:  # report, keep it queued
                log.error("job_retry: retry of %s to %s failed: %s", jid, minion, exc)
                result["queued"].append(minion)
                continue
            fire_action(env.fire, "replayed", jid, minion, fun=job.get("fun"), attempt=0, retry_jid=fresh)
            result["published"].append(minion)
        result["retry_jid"] = fresh
    for minion in result["queued"]:
        fire_action(env.fire, "queued", jid, minion, fun=job.get("fun"))
    return result


def enqueue(env: Env) -> dict:
    queued = Replayer(env.store, env.conf, env.publish, env.fire, env.new_jid).sweep()
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
}
