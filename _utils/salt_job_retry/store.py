"""
The Redis schema of salt-job-retry and every operation on it.

Key layout (``P`` is ``key_prefix``; ``{jid}`` is a Redis Cluster hash tag, so
all keys of one job live in one slot and one Lua script may touch them):

=====================================  ======  =============================================
key                                    type    content
=====================================  ======  =============================================
``P:{<jid>}:job``                      string  msgpack map: fun, arg, tgt, tgt_type, user,
                                               time (publish time, epoch seconds), and
                                               ``excluded: true`` for excluded functions
``P:{<jid>}:targets``                  set     minion ids the job was published to (merged
                                               from every ``new`` event of the jid)
``P:{<jid>}:returned``                 set     minion ids whose return was seen
``P:{<jid>}:retry``                    hash    per-minion replay state, one field each:
                                               ``q:<id>`` queued at (epoch s),
                                               ``a:<id>`` replays so far,
                                               ``l:<id>`` claim lease until (epoch ms),
                                               ``p:<id>`` last replay published (epoch ms),
                                               ``d:<id>`` delivery ack seen (epoch ms),
                                               ``x:<id>`` final: ``exhausted``/``flushed``/
                                               ``interrupted``
``P:{<jid>}:alias``                    string  set on a fresh jid published by ``retry``:
                                               the original jid (the fresh jid is not
                                               tracked as a job of its own)
``P:unswept``                          zset    jids not yet swept, scored by publish time
``P:queues``                           zset    minion ids that have a queue, scored by
                                               last enqueue time
``P:minion:<quoted id>:queue``         zset    the minion's pending jids, scored by
                                               queued-at time (id percent-encoded)
``P:starts``                           zset    minions whose start is not served yet,
                                               scored by start time (epoch ms)
``P:jobs``                             zset    tracked jids, scored by publish time
``P:stats``                            hash    counters: replays, queued, exhausted,
                                               interrupted
``P:rate``                             hash    fleet-wide replay token bucket
=====================================  ======  =============================================

The per-job keys are the truth; ``unswept``, ``queues`` and the per-minion queues
are indexes that may briefly hold stale entries, which readers drop. Every key
gets ``EXPIRE ttl`` on each write. Nothing uses ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import msgpack
import redis
from redis.cluster import RedisCluster

from .config import Config

log = logging.getLogger(__name__)

# Redis' Lua stack limits how many arguments one unpack() may spread.

_RECORD_NEW = """
-- KEYS: job, alias   ARGV: ttl, job blob
-- The targets are added by a plain SADD in the same pipeline (no Lua argument
-- conversion for 10,000 ids); without a job record they are inert.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

_RECORD_RETURN = """
-- KEYS: targets, returned   ARGV: ttl, minion
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

_SWEEP_JOB = """
-- KEYS: targets, returned, retry, job   ARGV: ttl, now
-- Returns {minion, flag, ...} for every minion still owed the job: flag 1 newly
-- queued, 0 queued before, 2 acknowledged (running: indexed so that a restart
-- finds it, but not queued as missing).
local out = {}
if redis.call('EXISTS', KEYS[4]) == 0 then return out end  -- expired, or a retry's alias jid
for _, m in ipairs(redis.call('SDIFF', KEYS[1], KEYS[2])) do
  if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 0 then
    out[#out + 1] = m
    if redis.call('HEXISTS', KEYS[3], 'd:' .. m) == 1 then
      out[#out + 1] = 2
    else
      out[#out + 1] = redis.call('HSETNX', KEYS[3], 'q:' .. m, ARGV[2])
    end
  end
end
if #out > 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
return out
"""

_CLAIM = """
-- KEYS: job, targets, returned, retry
-- ARGV: minion, now_ms, lease_until_ms, max_attempts, ttl, started_ms, replay_interrupted
-- started_ms is when the minion's current process started: a replay published or
-- acknowledged after it reached that process, and is not sent again.
local m = ARGV[1]
if redis.call('SISMEMBER', KEYS[3], m) == 1 then return {'returned'} end
if redis.call('SISMEMBER', KEYS[2], m) == 0 then return {'unknown'} end
local final = redis.call('HGET', KEYS[4], 'x:' .. m)
if final then return {'final', final} end
local job = redis.call('GET', KEYS[1])
if not job then return {'expired'} end
local started = tonumber(ARGV[6])
local delivered = tonumber(redis.call('HGET', KEYS[4], 'd:' .. m) or '0')
if delivered >= started then return {'running'} end
local lease = tonumber(redis.call('HGET', KEYS[4], 'l:' .. m) or '0')
if lease > tonumber(ARGV[2]) then return {'leased', lease} end
if tonumber(redis.call('HGET', KEYS[4], 'p:' .. m) or '0') >= started then return {'sent'} end
redis.call('EXPIRE', KEYS[4], ARGV[5])
if delivered > 0 and ARGV[7] ~= '1' then
  redis.call('HSET', KEYS[4], 'x:' .. m, 'interrupted')
  return {'interrupted'}
end
local n = tonumber(redis.call('HGET', KEYS[4], 'a:' .. m) or '0')
if n >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[4], 'x:' .. m, 'exhausted')
  return {'exhausted', n}
end
redis.call('HSET', KEYS[4], 'a:' .. m, n + 1, 'l:' .. m, ARGV[3])
redis.call('HDEL', KEYS[4], 'd:' .. m)
return {'claimed', n + 1, job}
"""

_RECORD_DELIVERY = """
-- KEYS: targets, returned, retry   ARGV: ttl, minion, now_ms
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'd:' .. ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""

_MARK_PUBLISHED = """
-- KEYS: retry   ARGV: minion, now_ms, ttl
redis.call('HSET', KEYS[1], 'p:' .. ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], 'l:' .. ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_FINISH_START = """
-- KEYS: starts   ARGV: minion, started_ms.  Only if no newer start arrived meanwhile.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

_TAKE_TOKENS = """
-- KEYS: bucket   ARGV: per_second, burst, now_ms, wanted.  Returns how many were granted.
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local granted = math.min(tonumber(ARGV[4]), math.floor(tokens))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - granted), 'at', now)
redis.call('PEXPIRE', KEYS[1], 3600000)
return granted
"""

_RELEASE = """
-- KEYS: retry   ARGV: minion.  Undo a claim whose publish failed.
local n = tonumber(redis.call('HGET', KEYS[1], 'a:' .. ARGV[1]) or '0')
if n > 0 then redis.call('HSET', KEYS[1], 'a:' .. ARGV[1], n - 1) end
redis.call('HDEL', KEYS[1], 'l:' .. ARGV[1])
return n
"""

_FLUSH = """
-- KEYS: targets, returned, retry   ARGV: minion, ttl
local m = ARGV[1]
if redis.call('SISMEMBER', KEYS[1], m) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], m) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'x:' .. m, 'flushed')
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""

_RETRY_RESET = """
-- KEYS: targets, returned, retry   ARGV: ttl, now
-- An operator's retry: every minion that did not return gets a fresh budget.
local missing = redis.call('SDIFF', KEYS[1], KEYS[2])
for _, m in ipairs(missing) do
  redis.call('HDEL', KEYS[3], 'a:' .. m, 'l:' .. m, 'x:' .. m, 'd:' .. m, 'p:' .. m)
  redis.call('HSET', KEYS[3], 'q:' .. m, ARGV[2])
end
if #missing > 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
return missing
"""

SCRIPTS = {
    "record_new": _RECORD_NEW,
    "record_return": _RECORD_RETURN,
    "sweep_job": _SWEEP_JOB,
    "claim": _CLAIM,
    "release": _RELEASE,
    "flush": _FLUSH,
    "retry_reset": _RETRY_RESET,
    "record_delivery": _RECORD_DELIVERY,
    "mark_published": _MARK_PUBLISHED,
    "finish_start": _FINISH_START,
    "take_tokens": _TAKE_TOKENS,
}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}


class RedisUnavailable(Exception):
    """Redis could not be reached or refused us; the message is operator-ready."""


def connect(conf: Config) -> redis.Redis:
    """A client for ``conf`` (plain, Sentinel or Cluster); no I/O happens until the first command."""
    kwargs: dict[str, Any] = {
        "socket_timeout": conf.socket_timeout,
        "socket_connect_timeout": conf.socket_timeout,
        "decode_responses": False,
    }
    for option in ("username", "password"):
        if getattr(conf, option) is not None:
            kwargs[option] = getattr(conf, option)
    if conf.redis_url.startswith("rediss://"):
        if conf.sentinels or conf.cluster_nodes:
            kwargs["ssl"] = True
        for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if getattr(conf, option) is not None:
                kwargs[option] = getattr(conf, option)
    if conf.cluster_nodes:
        from redis.cluster import ClusterNode

        nodes = [ClusterNode(host, int(port)) for host, _, port in (n.rpartition(":") for n in conf.cluster_nodes)]
        return RedisCluster(startup_nodes=nodes, **kwargs)
    if conf.sentinels:
        from redis.sentinel import Sentinel

        addresses = [(host, int(port)) for host, _, port in (n.rpartition(":") for n in conf.sentinels)]
        sentinel_kwargs = {"socket_timeout": conf.socket_timeout, "password": conf.sentinel_password}
        db = int(urlsplit(conf.redis_url).path.strip("/") or 0)
        sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs, **kwargs)
        return sentinel.master_for(conf.sentinel_service, db=db, **kwargs)
    return redis.Redis.from_url(conf.redis_url, **kwargs)


def pack(value: Any) -> bytes:
    # default=str: odd types from YAML (dates, ...) are stored as text, never pickled.
    return msgpack.packb(value, use_bin_type=True, default=str)


def unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass
class Claim:
    jid: str
    # claimed | exhausted | interrupted | returned | unknown | expired | leased | sent | running
    # | flushed (and any other final state)
    state: str
    attempt: int = 0
    job: dict | None = None
    until_ms: int = 0  # for leased: when the other claim lapses


class Keys:
    """Key names; the only place they are spelled."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.unswept = f"{prefix}:unswept"
        self.queues = f"{prefix}:queues"
        self.starts = f"{prefix}:starts"
        self.rate = f"{prefix}:rate"
        self.jobs = f"{prefix}:jobs"
        self.stats = f"{prefix}:stats"

    def job(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:job"

    def targets(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:targets"

    def returned(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:returned"

    def retry(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:retry"

    def alias(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:alias"

    def queue(self, minion: str) -> str:
        # Percent-encoding keeps ':', '{', '}', spaces and non-ASCII out of key
        # structure and hash tags; the whole key hashes, so queues spread over slots.
        return f"{self.prefix}:minion:{quote(minion, safe='')}:queue"


class Batch:
    """
    Commands and script calls sent in one pipeline (one round trip).

    Scripts run by EVALSHA; if Redis lost its script cache (restart, failover)
    the failed calls are loaded and re-sent once. Every script is idempotent.
    """

    def __init__(self, client: redis.Redis):
        self._client = client
        self._ops: list[tuple[str, tuple]] = []

    def __len__(self) -> int:
        return len(self._ops)

    def call(self, *args: Any) -> int:
        self._ops.append(("cmd", args))
        return len(self._ops) - 1

    def script(self, name: str, keys: list[str], args: list[Any]) -> int:
        self._ops.append(("script", (name, keys, args)))
        return len(self._ops) - 1

    def _queue(self, pipe, kind: str, op: tuple) -> None:
        if kind == "cmd":
            pipe.execute_command(*op)
        else:
            name, keys, args = op
            pipe.execute_command("EVALSHA", SHAS[name], len(keys), *keys, *args)

    def execute(self) -> list[Any]:
        if not self._ops:
            return []
        results = self._send(self._ops)
        missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            log.info("job_retry: Redis has no cached scripts (restarted?); loading them")
            self._load_scripts()
            for i, result in zip(missing, self._send([self._ops[i] for i in missing]), strict=False):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _load_scripts(self) -> None:
        if isinstance(self._client, RedisCluster):  # SCRIPT LOAD goes to every primary
            for body in SCRIPTS.values():
                self._client.script_load(body)
            return
        pipe = self._client.pipeline(transaction=False)
        for body in SCRIPTS.values():
            pipe.script_load(body)
        pipe.execute()

    def _send(self, ops) -> list[Any]:
        if len(ops) == 1:  # no pipeline object for a single command: cheaper on the hot path
            kind, op = ops[0]
            try:
                if kind == "cmd":
                    return [self._client.execute_command(*op)]
                name, keys, args = op
                return [self._client.execute_command("EVALSHA", SHAS[name], len(keys), *keys, *args)]
            except redis.exceptions.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for kind, op in ops:
            self._queue(pipe, kind, op)
        return pipe.execute(raise_on_error=False)


class Store:
    """Every read and write of job_retry state. Loader modules call only this."""

    def __init__(self, client: redis.Redis, conf: Config, clock: Callable[[], float] = time.time):
        self.client = client
        self.conf = conf
        self.keys = Keys(conf.key_prefix)
        self.clock = clock

    # -- plumbing -----------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self.client)

    def run(self, fill: Callable[[Batch], Any]) -> list[Any]:
        """Fill a batch and execute it, turning connection failures into RedisUnavailable."""
        batch = self.batch()
        fill(batch)
        return guard(self.conf, batch.execute)

    # -- recording (returner) -------------------------------------------------------

    def stage_job(self, batch: Batch, jid: str, blob: bytes, published: float, minions: Iterable[str]) -> None:
        """Record a published job (packed) and merge its targets (a replay's `new` names one minion)."""
        k, ttl = self.keys, self.conf.ttl
        batch.script("record_new", [k.job(jid), k.alias(jid)], [ttl, blob])
        if minions:
            batch.call("SADD", k.targets(jid), *minions)
            batch.call("EXPIRE", k.targets(jid), ttl)
        batch.call("ZADD", k.unswept, "NX", published, jid)
        batch.call("EXPIRE", k.unswept, ttl)
        batch.call("ZADD", k.jobs, "NX", published, jid)
        batch.call("EXPIRE", k.jobs, ttl)

    def stage_excluded_job(self, batch: Batch, jid: str, job: dict) -> None:
        """Remember only that the jid ran an excluded function, so `status` can say so."""
        self.stage_unrecorded_job(batch, jid, {**job, "excluded": True})

    def stage_unrecorded_job(self, batch: Batch, jid: str, job: dict) -> None:
        """Remember a job that is not tracked (excluded, too large) and why, without targets."""
        batch.call("SET", self.keys.job(jid), pack(job), "NX", "EX", self.conf.ttl)

    def stage_return(self, batch: Batch, jid: str, minion: str) -> None:
        # One command on the hot path: the minion's queue entry, if any, is dropped lazily
        # (pending() and claims skip and remove entries whose minion returned).
        k = self.keys
        batch.script("record_return", [k.targets(jid), k.returned(jid)], [self.conf.ttl, minion])

    def register_alias(self, new_jid: str, orig_jid: str) -> None:
        """Mark a fresh jid (from `retry`) as a copy of orig_jid, before it is published."""
        self.run(lambda b: b.call("SET", self.keys.alias(new_jid), orig_jid, "EX", self.conf.ttl))

    # -- sweep ----------------------------------------------------------------------

    def sweep(self, limit: int = 500, progress: Callable[[int], None] | None = None) -> list[tuple[str, str, dict]]:
        """
        Queue the missing minions of every job published more than `timeout` ago.

        Returns the newly queued (jid, minion, job). Cost grows with the jobs that
        came due, not with everything stored: only `unswept` is read.
        """
        queued: list[tuple[str, str, dict]] = []
        while True:
            now = self.clock()
            cutoff = now - self.conf.timeout
            jids = [
                _text(j)
                for j in guard(self.conf, self.client.zrangebyscore, self.keys.unswept, "-inf", cutoff, 0, limit)
            ]
            if not jids:
                return queued
            queued.extend(self._sweep_jobs(jids, now))
            if progress:
                progress(len(jids))
            if len(jids) < limit:
                return queued

    def _sweep_jobs(self, jids: list[str], now: float) -> list[tuple[str, str, dict]]:
        k, ttl = self.keys, self.conf.ttl

        def fill(b: Batch) -> None:
            for jid in jids:
                b.script("sweep_job", [k.targets(jid), k.returned(jid), k.retry(jid), k.job(jid)], [ttl, repr(now)])
                b.call("GET", k.job(jid))

        results = self.run(fill)
        owed: list[tuple[str, str, bool, dict]] = []
        for i, jid in enumerate(jids):
            pairs, blob = results[2 * i], results[2 * i + 1]
            job = unpack(blob) if blob else {}
            owed.extend((jid, _text(pairs[j]), pairs[j + 1] == 1, job) for j in range(0, len(pairs), 2))

        def enqueue(b: Batch) -> None:
            for jid, minion, _, _ in owed:
                b.call("ZADD", k.queue(minion), "NX", now, jid)
                b.call("EXPIRE", k.queue(minion), ttl)
                b.call("ZADD", k.queues, now, minion)
            b.call("EXPIRE", k.queues, ttl)
            b.call("ZREM", k.unswept, *jids)
            b.call("ZREMRANGEBYSCORE", k.jobs, "-inf", now - ttl)  # their keys have expired
            fresh = sum(1 for _, _, new, _ in owed if new)
            if fresh:
                b.call("HINCRBY", k.stats, "queued", fresh)
                b.call("EXPIRE", k.stats, ttl)

        self.run(enqueue)
        return [(jid, minion, job) for jid, minion, new, job in owed if new]

    # -- replay (engine) --------------------------------------------------------------

    def owed_candidates(self, minion: str) -> tuple[list[str], set[str]]:
        """Jids that may be owed to minion: its queue plus every not-yet-swept job."""
        queue, unswept = self.run(
            lambda b: (b.call("ZRANGE", self.keys.queue(minion), 0, -1), b.call("ZRANGE", self.keys.unswept, 0, -1))
        )
        queued = [_text(j) for j in queue]
        seen = set(queued)
        return queued + [j for j in map(_text, unswept) if j not in seen], seen

    def claim(self, minion: str, jids: list[str], started_ms: int) -> list[Claim]:
        """Atomically claim a replay of each jid for minion's process started at started_ms (see _CLAIM)."""
        k, conf = self.keys, self.conf
        now_ms = int(self.clock() * 1000)
        lease_ms = now_ms + int(conf.claim_lease * 1000)
        args = [now_ms, lease_ms, conf.max_attempts, conf.ttl, started_ms, int(conf.replay_interrupted)]

        def fill(b: Batch) -> None:
            for jid in jids:
                b.script("claim", [k.job(jid), k.targets(jid), k.returned(jid), k.retry(jid)], [minion, *args])

        claims = []
        for jid, result in zip(jids, self.run(fill), strict=True):
            state = _text(result[0])
            if state == "final":
                claims.append(Claim(jid, _text(result[1])))
            elif state == "claimed":
                claims.append(Claim(jid, state, int(result[1]), unpack(result[2])))
            elif state == "leased":
                claims.append(Claim(jid, state, until_ms=int(result[1])))
            else:
                claims.append(Claim(jid, state, int(result[1]) if len(result) > 1 else 0))
        return claims

    def mark_published(self, minion: str, jids: list[str]) -> None:
        """Record that replays of jids reached the master's publisher (ends their lease)."""
        now_ms = int(self.clock() * 1000)
        if jids:

            def fill(b: Batch) -> None:
                for jid in jids:
                    b.script("mark_published", [self.keys.retry(jid)], [minion, now_ms, self.conf.ttl])
                self._count(b, "replays", len(jids))

            self.run(fill)

    def _count(self, batch: Batch, counter: str, n: int) -> None:
        batch.call("HINCRBY", self.keys.stats, counter, n)
        batch.call("EXPIRE", self.keys.stats, self.conf.ttl)

    def count(self, counter: str, n: int) -> None:
        """Add n to one of the `stats` counters."""
        if n:
            self.run(lambda b: self._count(b, counter, n))

    def stats(self) -> dict[str, Any]:
        """Counts for operators and metrics (one pipeline, plus the pending listing)."""
        k, now = self.keys, self.clock()
        jobs, unswept, starts, counters = self.run(
            lambda b: (
                b.call("ZCOUNT", k.jobs, now - self.conf.ttl, "+inf"),
                b.call("ZCARD", k.unswept),
                b.call("ZCARD", k.starts),
                b.call("HGETALL", k.stats),
            )
        )
        pending = self.pending(self.queued_minions())
        queued_at = [from_iso(e["queued_at"]) for entries in pending.values() for e in entries]
        counters = {_text(f): int(v) for f, v in counters.items()}
        return {
            "tracked_jobs": int(jobs),
            "unswept_jobs": int(unswept),
            "starts_waiting": int(starts),
            "pending_total": sum(len(e) for e in pending.values()),
            "pending_by_minion": {m: len(e) for m, e in sorted(pending.items()) if e},
            "oldest_pending_age_seconds": round(now - min(queued_at), 1) if queued_at else 0,
            **{name: counters.get(name, 0) for name in ("queued", "replays", "exhausted", "interrupted")},
        }

    def stage_delivery(self, batch: Batch, jid: str, minion: str, at_ms: int) -> None:
        """A minion acknowledged the job (``salt/job/<jid>/start/<id>``, Salt 3008 start_event)."""
        k = self.keys
        batch.script("record_delivery", [k.targets(jid), k.returned(jid), k.retry(jid)], [self.conf.ttl, minion, at_ms])

    # -- start queue and rate limit (engine) -------------------------------------------

    def note_starts(self, starts: dict[str, int]) -> None:
        """Durably remember minions that (re)started, so any engine can serve them."""
        if starts:

            def fill(b: Batch) -> None:
                for minion, started_ms in starts.items():
                    b.call("ZADD", self.keys.starts, "GT", started_ms, minion)
                b.call("EXPIRE", self.keys.starts, self.conf.ttl)

            self.run(fill)

    def due_starts(self, limit: int) -> list[tuple[str, int]]:
        """The oldest `limit` unserved starts as (minion, started_ms)."""
        rows = guard(self.conf, self.client.zrange, self.keys.starts, 0, limit - 1, False, True)
        return [(_text(m), int(score)) for m, score in rows]

    def finish_start(self, minion: str, started_ms: int) -> None:
        self.run(lambda b: b.script("finish_start", [self.keys.starts], [minion, started_ms]))

    def take_tokens(self, wanted: int) -> int:
        """Replays allowed now by the fleet-wide `max_replays_per_second` bucket."""
        rate = self.conf.max_replays_per_second
        burst = max(1, math.ceil(rate / 10))  # 100 ms worth: any one-second window stays near `rate`
        now_ms = int(self.clock() * 1000)
        (granted,) = self.run(lambda b: b.script("take_tokens", [self.keys.rate], [rate, burst, now_ms, wanted]))
        return int(granted)

    def release(self, jid: str, minion: str) -> None:
        self.run(lambda b: b.script("release", [self.keys.retry(jid)], [minion]))

    def dequeue(self, minion: str, jids: Iterable[str]) -> None:
        jids = list(jids)
        if jids:
            self.run(lambda b: b.call("ZREM", self.keys.queue(minion), *jids))

    # -- operator views (runner) ------------------------------------------------------

    def job(self, jid: str) -> dict | None:
        blob = guard(self.conf, self.client.get, self.keys.job(jid))
        return unpack(blob) if blob else None

    def queued_minions(self) -> list[str]:
        return [_text(m) for m in guard(self.conf, self.client.zrange, self.keys.queues, 0, -1)]

    def pending(self, minions: list[str]) -> dict[str, list[dict]]:
        """Each minion's queued jobs, oldest first; stale entries are dropped from the index."""
        k = self.keys
        queues = self.run(lambda b: [b.call("ZRANGE", k.queue(m), 0, -1, "WITHSCORES") for m in minions])
        entries = [(m, _text(jid), score) for m, queue in zip(minions, queues, strict=False) for jid, score in queue]

        def fill(b: Batch) -> None:
            for m, jid, _ in entries:
                b.call("GET", k.job(jid))
                b.call("SISMEMBER", k.returned(jid), m)
                b.call("HMGET", k.retry(jid), f"a:{m}", f"x:{m}", f"d:{m}")

        results = self.run(fill) if entries else []
        out: dict[str, list[dict]] = {m: [] for m in minions}
        stale: dict[str, list[str]] = {}
        live: set[str] = set()  # minions with an entry worth keeping in the index
        for i, (m, jid, queued_at) in enumerate(entries):
            blob, returned, (attempts, final, delivered) = results[3 * i : 3 * i + 3]
            if not blob or returned or final:
                stale.setdefault(m, []).append(jid)
                continue
            live.add(m)
            if delivered:  # acknowledged: running, not pending (kept in the index for a restart)
                continue
            job = unpack(blob)
            out[m].append(
                {
                    "jid": jid,
                    "fun": job.get("fun"),
                    "arg": job.get("arg", []),
                    "attempts": int(attempts or 0),
                    "queued_at": iso(float(queued_at)),
                }
            )
        self._drop_stale(stale, [m for m in minions if m not in live])
        return out

    def _drop_stale(self, stale: dict[str, list[str]], empty: list[str]) -> None:
        if not stale and not empty:
            return

        def fill(b: Batch) -> None:
            for m, jids in stale.items():
                b.call("ZREM", self.keys.queue(m), *jids)
            if empty:
                b.call("ZREM", self.keys.queues, *empty)

        self.run(fill)

    def flush(self, minion: str, jids: list[str] | None = None) -> list[str]:
        """Cancel what minion is owed (all, or the given jids). Returns the jids cancelled."""
        if jids is None:
            jids, _ = self.owed_candidates(minion)
        k = self.keys
        results = self.run(
            lambda b: [
                b.script("flush", [k.targets(j), k.returned(j), k.retry(j)], [minion, self.conf.ttl]) for j in jids
            ]
        )
        flushed = [jid for jid, done in zip(jids, results, strict=False) if done]
        self.dequeue(minion, jids)
        return flushed

    def status(self, jid: str) -> dict | None:
        k = self.keys
        blob, targets, returned, retry, unswept = self.run(
            lambda b: (
                b.call("GET", k.job(jid)),
                b.call("SMEMBERS", k.targets(jid)),
                b.call("SMEMBERS", k.returned(jid)),
                b.call("HGETALL", k.retry(jid)),
                b.call("ZSCORE", k.unswept, jid),
            )
        )
        if not blob:
            return None
        job = unpack(blob)
        fields = {_text(f): _text(v) for f, v in retry.items()}
        returned = {_text(m) for m in returned}
        now = self.clock()
        minions = {}
        for m in sorted(_text(t) for t in targets):
            minions[m] = minion_state(m, returned, fields, job, now, self.conf.timeout)
        if job.get("excluded"):
            minions = {}
        return {"job": job, "minions": minions, "swept": unswept is None}

    def prepare_retry(self, jid: str) -> list[str]:
        """Reset and queue every minion of jid that did not return. Returns them."""
        k, ttl, now = self.keys, self.conf.ttl, self.clock()
        (missing,) = self.run(
            lambda b: b.script("retry_reset", [k.targets(jid), k.returned(jid), k.retry(jid)], [ttl, repr(now)])
        )
        missing = sorted(_text(m) for m in missing)

        def fill(b: Batch) -> None:
            for m in missing:
                b.call("ZADD", k.queue(m), now, jid)
                b.call("EXPIRE", k.queue(m), ttl)
                b.call("ZADD", k.queues, now, m)
            b.call("EXPIRE", k.queues, ttl)

        if missing:
            self.run(fill)
        return missing


def minion_state(
    minion: str, returned: set[str], fields: dict[str, str], job: dict, now: float, timeout: float
) -> dict:
    """One minion's state in a job, as `status` shows it."""
    attempts = int(fields.get(f"a:{minion}", 0))
    state: dict[str, Any] = {"attempts": attempts}
    if fields.get(f"p:{minion}"):
        state["last_replay_at"] = iso(int(fields[f"p:{minion}"]) / 1000)
    if minion in returned:
        return {"state": "returned", **state}
    final = fields.get(f"x:{minion}")
    if final:
        return {"state": final, **state}
    if fields.get(f"d:{minion}"):
        return {"state": "delivered", **state, "delivered_at": iso(int(fields[f"d:{minion}"]) / 1000)}
    queued_at = fields.get(f"q:{minion}")
    if queued_at is not None or attempts or now - job.get("time", 0) >= timeout:
        if queued_at is not None:
            state["queued_at"] = iso(float(queued_at))
        return {"state": "pending", **state}
    return {"state": "waiting", **state}


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(epoch: float) -> str:
    return time.strftime(ISO_FORMAT, time.gmtime(epoch))


def from_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, ISO_FORMAT)))


def guard(conf: Config, call: Callable, *args: Any) -> Any:
    """Run a Redis call; connection trouble becomes RedisUnavailable with an operator-ready message."""
    try:
        return call(*args)
    except redis.exceptions.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {conf.redis_display} refused the credentials: {exc}") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if "SSL" in str(exc) or "certificate" in str(exc):
            raise RedisUnavailable(f"TLS with Redis at {conf.redis_display} failed: {exc}") from exc
        raise RedisUnavailable(f"Redis unreachable at {conf.redis_display}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {conf.redis_display} refused the credentials: {exc}") from exc
        raise
