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
``P:unswept``                          zset    jids not yet swept, scored by publish time (swept: SWEPT + it)
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
-- KEYS: job, alias, returned, retry   ARGV: ttl, job blob
-- The targets are added by a plain SADD in the same pipeline (no Lua argument
-- conversion for 10,000 ids); without a job record they are inert. A job announced
-- again (a replay under its own jid) renews every key of the job together: a returned
-- set that expired before the job would make every minion that returned owed again.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[1])
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

# Every script that compares times reads Redis' own clock, so masters whose clocks
# disagree still agree on leases and deadlines. ARGV "now" overrides it (tests only).
_NOW = """
local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_NOTE_START = (
    _NOW
    + """
-- KEYS: seq   ARGV: engine, pid ('' = not known yet), stamp_ms, lease_ms, ttl, now
-- A minion's (re)connection seen by `engine`. The pid tells a new process from the
-- same process seen again (another master, failover, a master restart).
local seq, engine, pid, stamp = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms(ARGV[6])
local f = redis.call('HMGET', seq, 'proc', 'owner', 'lease', 'born', 'pend')
local proc, owner, lease, born = f[1], f[2], tonumber(f[3] or '0'), tonumber(f[4] or '0')
if pid == '' then
  -- pend_by: the engine that saw it may take the sequence over to identify the process
  if stamp > tonumber(f[5] or '-1') then redis.call('HSET', seq, 'pend', stamp, 'pend_by', engine) end
  redis.call('EXPIRE', seq, ARGV[5])
  return {'resolve'}
end
redis.call('EXPIRE', seq, ARGV[5])
if tonumber(f[5] or '-1') <= stamp then redis.call('HDEL', seq, 'pend', 'pend_by') end
if proc == pid then
  if stamp > tonumber(redis.call('HGET', seq, 'started') or '0') then redis.call('HSET', seq, 'started', stamp) end
  if owner == engine or not owner or lease < now then
    redis.call('HSET', seq, 'owner', engine, 'lease', now + tonumber(ARGV[4]))
    return {'same'}
  end
  return {'same-owned', owner}
end
-- A process found by asking (stamp 0) replaced the one we knew: it connected about now.
if proc and stamp == 0 then stamp = now end
if proc and stamp < born then return {'stale'} end
redis.call('HSET', seq, 'proc', pid, 'born', stamp, 'started', stamp, 'owner', engine, 'lease', now + tonumber(ARGV[4]))
redis.call('HDEL', seq, 'wait')
redis.call('EXPIRE', seq, ARGV[5])
return {'new'}
"""
)

_SEQ_TAKE = (
    _NOW
    + """
-- KEYS: seq, queue   ARGV: engine, lease_ms, peek, ttl, now
-- The minion's replay sequence for `engine`: {'mine', now, fields..., queue head} or
-- {'other', owner} while another engine's lease on it is live.
local seq, engine = KEYS[1], ARGV[1]
local now = now_ms(ARGV[5])
local owner = redis.call('HGET', seq, 'owner')
local lease = tonumber(redis.call('HGET', seq, 'lease') or '0')
-- a start only this engine saw (a failover minion now on its master) outranks a live lease
local claimant = redis.call('HGET', seq, 'pend_by')
if owner and owner ~= engine and lease >= now and claimant ~= engine then return {'other', owner} end
redis.call('HSET', seq, 'owner', engine, 'lease', now + tonumber(ARGV[2]))
redis.call('EXPIRE', seq, ARGV[4])
local f = redis.call('HMGET', seq, 'proc', 'started', 'cur', 'wait', 'acks', 'pend', 'born', 'pub')
local head = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
return {'mine', now, f[1] or '', f[2] or '0', f[3] or '', f[4] or '0', f[5] or '', f[6] or '', head,
        f[7] or '0', f[8] or ''}
"""
)

_SEQ_SET = (
    _NOW
    + """
-- KEYS: seq   ARGV: engine, ttl, now, field, value, ...  (value '' deletes the field)
-- Only the engine that holds the sequence may move it.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local now = now_ms(ARGV[3])
for i = 4, #ARGV, 2 do
  local value = ARGV[i + 1]
  if value == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else
    if string.sub(value, 1, 1) == '+' then value = now + tonumber(string.sub(value, 2)) end
    redis.call('HSET', KEYS[1], ARGV[i], value)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return now
"""
)

_PAIR = (
    _NOW
    + """
-- KEYS: job, targets, returned, retry
-- ARGV: minion, proc, started_ms, published_ms, mode, max_attempts, replay_interrupted,
--       ttl, max_refusals, now, born_ms, fresh jid ('' if none), replay_jid mode, jid
-- A claim records in j:<id> the jid the replay goes out under: the original, or the fresh
-- one (replay_jid: new, or a refused run: the minion's jid queue holds the original).
-- Where one (jid, minion) stands for the minion process `proc` that connected at
-- started_ms; mode 'look' only reads, 'claim'/'again' take the next replay.
--   done      returned, final, expired, or not a target: drop it from the queue
--   sent      already published to this process (by a replay): wait for its return
--   after     published after the process connected: Salt delivered it
--   refused   the last delivery returned Salt's "state run already running" refusal
--   acked     acknowledged by an older process, which died before returning
--   owed      never reached this process: the next replay
local m, proc, mode = ARGV[1], ARGV[2], ARGV[5]
if redis.call('SISMEMBER', KEYS[3], m) == 1 then return {'done', 'returned'} end
if redis.call('SISMEMBER', KEYS[2], m) == 0 then return {'done', 'unknown'} end
local r = KEYS[4]
local f = redis.call('HMGET', r, 'x:' .. m, 'p:' .. m, 't:' .. m, 'k:' .. m, 'd:' .. m, 'a:' .. m, 'c:' .. m, 'r:' .. m,
                     'j:' .. m, 'u:' .. m)
-- u:<id>: the last publish (under j:<id>) may have gone out though it failed or was not
-- confirmed; sending it again under that same jid lets the minion drop a copy it has.
local function pub_jid(default)
  if (f[10] or mode == 'again') and f[9] then return f[9] end
  return default
end
if f[1] then return {'done', f[1]} end
local job = redis.call('GET', KEYS[1])
if not job then return {'done', 'expired'} end
local p, t, k, d = f[2], f[3], f[4], f[5]
local n, c = tonumber(f[6] or '0'), tonumber(f[7] or '0')
local state = 'owed'
if k and k == (t or '0') then state = 'refused'
elseif p == proc then state = 'sent'
-- a `retry` that did not know the process yet (its pid not learnt): sent after it first
-- connected (born; a reconnection of the same process moves `started`, not `born`)
elseif p == 'retry' and tonumber(t or '0') >= tonumber(ARGV[11]) then state = 'sent'
elseif d then
  -- acknowledged: by this process (running), or by one born before it (it died running it)
  if tonumber(d) >= tonumber(ARGV[11]) then state = 'sent' else state = 'acked' end
-- published after the process connected: Salt delivered it (unless a publish of ours failed)
elseif tonumber(ARGV[4]) > tonumber(ARGV[3]) and not f[10] then state = 'after' end
-- for a refusal: when it was refused, which the backoff counts from
local at = t or '0'
if state == 'refused' and f[8] then at = f[8] end
if mode == 'look' then return {state, n, d and 1 or 0, job, at, c} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = tonumber(ARGV[8]) * 1000 end
local now = now_ms(ARGV[10])
if state == 'acked' then
  if ARGV[7] ~= '1' then
    redis.call('HSET', r, 'x:' .. m, 'interrupted')
    redis.call('PEXPIRE', r, ttl)
    return {'interrupted', n}
  end
  state = 'owed'
end
if state == 'refused' then
  if c >= tonumber(ARGV[9]) then
    redis.call('HSET', r, 'x:' .. m, 'exhausted')
    redis.call('PEXPIRE', r, ttl)
    return {'exhausted', n}
  end
  local pub = ARGV[12] ~= '' and ARGV[12] or ARGV[14]
  if f[10] and f[9] then pub = f[9] end
  redis.call('HSET', r, 'c:' .. m, c + 1, 'p:' .. m, proc, 't:' .. m, now, 'j:' .. m, pub)
  redis.call('HDEL', r, 'k:' .. m, 'd:' .. m, 'u:' .. m)
  redis.call('PEXPIRE', r, ttl)
  return {'claimed', n, job, 'refusal', pub}
end
if mode == 'again' and state == 'sent' and c > 0 then
  -- sent again after a refusal: the original jid would be dropped, so a fresh one, as a refusal
  local pub = pub_jid(ARGV[12] ~= '' and ARGV[12] or ARGV[14])
  redis.call('HSET', r, 't:' .. m, now, 'j:' .. m, pub)
  redis.call('HDEL', r, 'd:' .. m, 'u:' .. m)
  redis.call('PEXPIRE', r, ttl)
  return {'claimed', n, job, 'refusal', pub}
end
if state == 'owed' or (mode == 'again' and state == 'sent') then
  if n >= tonumber(ARGV[6]) then
    redis.call('HSET', r, 'x:' .. m, 'exhausted')
    redis.call('PEXPIRE', r, ttl)
    return {'exhausted', n}
  end
  local pub = pub_jid(ARGV[14])
  if ARGV[13] == 'new' and ARGV[12] ~= '' then pub = pub_jid(ARGV[12]) end
  redis.call('HSET', r, 'a:' .. m, n + 1, 'p:' .. m, proc, 't:' .. m, now, 'j:' .. m, pub)
  redis.call('HDEL', r, 'd:' .. m, 'k:' .. m, 'u:' .. m)
  redis.call('PEXPIRE', r, ttl)
  return {'claimed', n + 1, job, 'attempt', pub}
end
return {state, n}
"""
)

_RECORD_DELIVERY = """
-- KEYS: targets, returned, retry   ARGV: ttl, minion, now_ms
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'd:' .. ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""

_RECORD_REFUSAL = (
    _NOW
    + """
-- KEYS: targets, returned, retry   ARGV: ttl, minion, now, jid the refused run had
-- Only a refusal of the latest delivery (j:<id>) counts: a late copy of an older one must
-- not mark the re-send that replaced it.
-- Salt refused to start the job (another state run was running): not a return. The
-- marker names the delivery it refused ('0': the original publish), so a later
-- replay of the pair clears it.
local m = ARGV[2]
if redis.call('SISMEMBER', KEYS[1], m) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], m) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 1 then return 0 end
local latest = redis.call('HGET', KEYS[3], 'j:' .. m)
if latest and latest ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[3], 'k:' .. m, redis.call('HGET', KEYS[3], 't:' .. m) or '0', 'r:' .. m, now_ms(ARGV[3]))
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""
)

_MINION_RUN = (
    _NOW
    + """
-- KEYS: job, targets, retry, alias   ARGV: ttl, job blob, minion, now
-- A state run the minion started itself (startup_states) that Salt refused because one of
-- our replays was running: had the minion been up, it would have run. Recorded as a job of
-- that minion, refused, so it goes out once the sequence reaches it. Never over a known job.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local m = ARGV[3]
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
redis.call('SADD', KEYS[2], m)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'k:' .. m, '0', 'r:' .. m, now_ms(ARGV[4]))
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""
)

_TAKE_DUE = (
    _NOW
    + """
-- KEYS: active   ARGV: limit, now.  Minions due now, and the next due time after them.
local now = now_ms(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {now, due, nxt[2] or ''}
"""
)

_REWIND = (
    _NOW
    + """
-- KEYS: active   ARGV: now, limit.  An engine (re)starting does not know what its minions
-- wait for (that lived in the old process): make them due now, `limit` at a time.
local now = now_ms(ARGV[1])
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #later do redis.call('ZADD', KEYS[1], now, later[i]) end
return later
"""
)

_HEARTBEAT = (
    _NOW
    + """
-- KEYS: engines   ARGV: engine, dead_after_ms, ttl, now.  Returns engines gone silent.
local now = now_ms(ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
"""
)

_ADOPT = """
-- KEYS: dead engine's active set, my active set, engines   ARGV: dead engine, ttl
-- Take over the minions a silent engine was serving; each is re-checked before use.
local moved = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #moved, 2 do redis.call('ZADD', KEYS[2], 'NX', moved[i + 1], moved[i]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if #moved > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
local out = {}
for i = 1, #moved, 2 do out[#out + 1] = moved[i] end
return out
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
-- KEYS: retry   ARGV: minion, kind ('attempt' | 'refusal'), ttl
-- A claim whose publish failed: owed again. The attempt (or refusal) stays counted: a
-- publish that raised may still have gone out, and a failing one must not loop forever.
local m = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'p:' .. m, 't:' .. m)
redis.call('HSET', KEYS[1], 'u:' .. m, '1')  -- it may have gone out under j:<id>: reuse that jid
if ARGV[2] == 'refusal' then redis.call('HSET', KEYS[1], 'k:' .. m, '0') end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_SETTLE = """
-- KEYS: targets, returned, retry   ARGV: minion, final state, by jid (or ''), ttl
local m = ARGV[1]
if redis.call('SISMEMBER', KEYS[1], m) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], m) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'x:' .. m, ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], 's:' .. m, ARGV[3]) end
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""

_FLUSH = """
-- KEYS: targets, returned, retry   ARGV: minion, ttl, dry ('1': only say whether it would)
local m = ARGV[1]
if redis.call('SISMEMBER', KEYS[1], m) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], m) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 1 then return 0 end
if ARGV[3] == '1' then return 1 end
redis.call('HSET', KEYS[3], 'x:' .. m, 'flushed')
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""

_RETRY_CLAIM = (
    _NOW
    + """
-- KEYS: targets, returned, retry
-- ARGV: ttl, queued_at (epoch s), now, window_ms, fresh jid, then per minion: id, proc (its
--       last known pid, '' none), pending ('1': a newer connection's pid is being asked for), send
-- An operator's retry. A minion that had the job delivered less than window_ms ago — to its
-- process, to a process not identified yet ('retry'), or to its last known process while a
-- reconnection is being identified (it may be the same one) — has it in flight (a replay, or
-- another retry): it is left alone, so a second retry publishes nothing. Every other minion
-- that did not return gets a fresh budget; those to send now are marked sent to their process
-- (or 'retry' when it is not known) under the fresh jid before the publish, so the engine
-- does not replay the job to them as well.
local r, now, window, fresh = KEYS[3], now_ms(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local reset, claimed, busy = {}, {}, {}
for i = 6, #ARGV, 4 do
  local m, known, pending, send = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local proc = known
  if proc == '' or pending == '1' then proc = 'retry' end
  if redis.call('SISMEMBER', KEYS[1], m) == 1 and redis.call('SISMEMBER', KEYS[2], m) == 0 then
    local f = redis.call('HMGET', r, 'p:' .. m, 't:' .. m)
    local recent = f[1] and now - tonumber(f[2] or '0') < window
    if recent and (f[1] == proc or f[1] == 'retry' or f[1] == known) then
      busy[#busy + 1] = m
    else
      redis.call('HDEL', r, 'a:' .. m, 'l:' .. m, 'x:' .. m, 'd:' .. m, 'p:' .. m, 't:' .. m, 'k:' .. m, 'c:' .. m,
                 'u:' .. m, 's:' .. m, 'r:' .. m)
      redis.call('HSET', r, 'q:' .. m, ARGV[2])
      reset[#reset + 1] = m
      if send == '1' then
        redis.call('HSET', r, 'p:' .. m, proc, 't:' .. m, now, 'j:' .. m, fresh)
        claimed[#claimed + 1] = m
      end
    end
  end
end
if #reset > 0 then redis.call('EXPIRE', r, ARGV[1]) end
return {reset, claimed, busy}
"""
)

SCRIPTS = {
    "record_new": _RECORD_NEW,
    "record_return": _RECORD_RETURN,
    "record_delivery": _RECORD_DELIVERY,
    "record_refusal": _RECORD_REFUSAL,
    "sweep_job": _SWEEP_JOB,
    "note_start": _NOTE_START,
    "seq_take": _SEQ_TAKE,
    "seq_set": _SEQ_SET,
    "pair": _PAIR,
    "release": _RELEASE,
    "settle": _SETTLE,
    "flush": _FLUSH,
    "retry_claim": _RETRY_CLAIM,
    "take_due": _TAKE_DUE,
    "minion_run": _MINION_RUN,
    "rewind": _REWIND,
    "heartbeat": _HEARTBEAT,
    "adopt": _ADOPT,
    "take_tokens": _TAKE_TOKENS,
}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}


# `P:unswept` scores of swept jobs: SWEPT + publish time, beyond every sweep's cutoff.
SWEPT = 10**11


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
    state: str  # claimed | exhausted | interrupted | done | sent | after | (see _PAIR)
    attempt: int = 0
    job: dict | None = None
    kind: str = ""  # for claimed: "attempt" (a replay) or "refusal" (again after a refusal)
    pub_jid: str = ""  # for claimed: the jid to publish under


@dataclass
class SeqView:
    """A minion's replay sequence as one engine holds it (times in Redis-clock ms)."""

    now_ms: int
    proc: str  # the minion process being served ('' until known)
    started_ms: int  # when that process last connected
    cur: str  # the replay in flight ('' when none)
    wait_ms: int  # how long to wait for cur's return
    acks: bool  # the minion has acknowledged replays before (Salt 3008 start events)
    pend_ms: int  # stamp of a (re)connection whose process is not identified yet (0: none)
    queue: list[tuple[str, float]]  # (jid, published epoch s), oldest first
    born_ms: int = 0  # when that process first connected
    pub: str = ""  # the jid the in-flight replay went out under ('' if its engine died before publishing)


@dataclass
class Look:
    """Where one queued job stands for the current process (see _PAIR)."""

    jid: str
    published: float
    state: str
    attempts: int = 0
    acked: bool = False
    job: dict | None = None
    sent_ms: int = 0
    refusals: int = 0
    final: str = ""


class Keys:
    """Key names; the only place they are spelled."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.unswept = f"{prefix}:unswept"
        self.queues = f"{prefix}:queues"
        self.rate = f"{prefix}:rate"
        self.jobs = f"{prefix}:jobs"
        self.stats = f"{prefix}:stats"
        # The engines' registry and work sets share one hash tag, so adopting a silent
        # engine's minions is one script.
        self.engines = f"{prefix}:{{active}}:engines"

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

    def _minion(self, minion: str) -> str:
        # Percent-encoding keeps ':', '{', '}', spaces and non-ASCII out of key structure;
        # the minion's keys share one hash tag, so its sequence and queue move together.
        return f"{self.prefix}:{{m:{quote(minion, safe='')}}}"

    def queue(self, minion: str) -> str:
        return f"{self._minion(minion)}:queue"

    def seq(self, minion: str) -> str:
        return f"{self._minion(minion)}:seq"

    def active(self, engine: str) -> str:
        return f"{self.prefix}:{{active}}:{quote(engine, safe='')}"


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

    CLOCK_EVERY = 60.0  # seconds between measurements of Redis' clock against ours

    def __init__(
        self,
        client: redis.Redis,
        conf: Config,
        clock: Callable[[], float] = time.time,
        redis_clock: bool | None = None,
    ):
        self.client = client
        self.conf = conf
        self.keys = Keys(conf.key_prefix)
        self.clock = clock
        # Every stored time is on Redis' clock, so masters whose clocks disagree still
        # agree: scripts read TIME, and times from Salt events (stamped by a master) are
        # shifted by `skew`, Redis' clock minus this host's. Off with an injected test clock.
        self.redis_clock = clock is time.time if redis_clock is None else redis_clock
        self.skew = 0.0
        self.clock_read_at: float | None = None  # time.monotonic() of the last measurement
        self.held_by = ""  # after take() answered None: the engine holding the sequence

    # -- one clock ------------------------------------------------------------------

    def now(self) -> float:
        """Now on Redis' clock (epoch seconds)."""
        self.ensure_clock()
        return self.clock() + self.skew

    def aligned(self, local: float) -> float:
        """A time read off this host's clock (a Salt event's stamp), on Redis' clock."""
        return local + self.skew

    def ensure_clock(self) -> None:
        """Measure the skew if it never was (one round trip, once per process)."""
        if self.redis_clock and self.clock_read_at is None:
            self.measure_clock()

    def measure_clock(self) -> None:
        """Measure the skew now (one round trip)."""
        before = self.clock()
        (reply,) = self.run(lambda b: b.call("TIME"))
        self._note_clock(reply, before, self.clock())

    def clock_due(self) -> bool:
        return self.redis_clock and (
            self.clock_read_at is None or time.monotonic() - self.clock_read_at > self.CLOCK_EVERY
        )

    def stage_clock(self, batch: Batch) -> int | None:
        """Measure the skew again with a batch about to go anyway (no extra round trip)."""
        return batch.call("TIME") if self.clock_due() else None

    def note_clock(self, results: list[Any], index: int | None, before: float, after: float) -> None:
        if index is not None:
            self._note_clock(results[index], before, after)

    def _note_clock(self, reply: Any, before: float, after: float) -> None:
        seconds, micros = (int(x) for x in reply)
        self.skew = seconds + micros / 1e6 - (before + after) / 2
        self.clock_read_at = time.monotonic()
        if abs(self.skew) > 1:
            log.warning("job_retry: this host's clock is %.1f s off Redis'; times are kept on Redis' clock", -self.skew)

    # -- plumbing -----------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self.client)

    def run(self, fill: Callable[[Batch], Any]) -> list[Any]:
        """Fill a batch and execute it, turning connection failures into RedisUnavailable."""
        batch = self.batch()
        fill(batch)
        return guard(self.conf, batch.execute)

    # -- recording (returner) -------------------------------------------------------

    def stage_job(self, batch: Batch, jid: str, blob: bytes, published: float, minions: Iterable[str]) -> int:
        """
        Record a published job (packed) and merge its targets (a replay's `new` names one minion).
        Returns the batch index whose result is 0 if jid is a replay's or a retry's fresh jid.
        """
        k, ttl = self.keys, self.conf.ttl
        index = batch.script("record_new", [k.job(jid), k.alias(jid), k.returned(jid), k.retry(jid)], [ttl, blob])
        if minions:
            batch.call("SADD", k.targets(jid), *minions)
            batch.call("EXPIRE", k.targets(jid), ttl)
        batch.call("ZADD", k.unswept, "NX", published, jid)
        batch.call("EXPIRE", k.unswept, ttl)
        batch.call("ZADD", k.jobs, "NX", published, jid)
        batch.call("EXPIRE", k.jobs, ttl)
        return index

    def forget_aliases(self, jids: list[str]) -> None:
        """A fresh jid is a copy of its original, not a job: out of the job indexes."""
        if jids:
            self.run(lambda b: (b.call("ZREM", self.keys.jobs, *jids), b.call("ZREM", self.keys.unswept, *jids)))

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
            now = self.now()
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
        published: dict[str, float] = {}
        for i, jid in enumerate(jids):
            pairs, blob = results[2 * i], results[2 * i + 1]
            job = unpack(blob) if blob else {}
            if job:
                published[jid] = float(job.get("time", now))
            owed.extend((jid, _text(pairs[j]), pairs[j + 1] == 1, job) for j in range(0, len(pairs), 2))

        def enqueue(b: Batch) -> None:
            for minion in {minion for _, minion, _, _ in owed}:
                # entries of expired jobs: a minion that is up but slow is queued for each job it
                # is late with and nobody may read its queue; this keeps it within ttl's worth
                b.call("ZREMRANGEBYSCORE", k.queue(minion), "-inf", now - ttl)
            for jid, minion, _, job in owed:  # scored by publish time: the order to replay in
                b.call("ZADD", k.queue(minion), "NX", job.get("time", now), jid)
                b.call("EXPIRE", k.queue(minion), ttl)
                b.call("ZADD", k.queues, now, minion)
            b.call("EXPIRE", k.queues, ttl)
            # Swept jobs stay in the index with a score past every cutoff: the `new` of a replay
            # under the original jid (ZADD NX) then leaves it swept instead of queueing it again.
            gone = [jid for jid in jids if jid not in published]
            if gone:
                b.call("ZREM", k.unswept, *gone)
            for jid, at in published.items():
                b.call("ZADD", k.unswept, "XX", SWEPT + at, jid)
            b.call("ZREMRANGEBYSCORE", k.unswept, SWEPT, SWEPT + now - ttl)  # their keys have expired
            b.call("ZREMRANGEBYSCORE", k.jobs, "-inf", now - ttl)
            fresh = sum(1 for _, _, new, _ in owed if new)
            if fresh:
                b.call("HINCRBY", k.stats, "queued", fresh)
                b.call("EXPIRE", k.stats, ttl)

        self.run(enqueue)
        # A connected minion's start may have been served before these were known (the returner
        # was behind, or a refusal came later): its engine looks again.
        self.wake([minion for _, minion, new, _ in owed if new], None)
        return [(jid, minion, job) for jid, minion, new, job in owed if new]

    # -- replay sequence (engine) --------------------------------------------------------

    def now_arg(self) -> str:
        """'' lets the scripts read Redis' clock; an injected test clock is passed instead."""
        return "" if self.redis_clock else str(int(self.clock() * 1000))

    def owed_candidates(self, minion: str) -> tuple[list[str], set[str]]:
        """Jids that may be owed to minion: its queue plus every not-yet-swept job."""
        queue, unswept = self.run(
            lambda b: (
                b.call("ZRANGE", self.keys.queue(minion), 0, -1),
                b.call("ZRANGEBYSCORE", self.keys.unswept, "-inf", f"({SWEPT}"),
            )
        )
        queued = [_text(j) for j in queue]
        seen = set(queued)
        return queued + [j for j in map(_text, unswept) if j not in seen], seen

    def note_starts(self, engine: str, starts: dict[str, tuple[int, str]]) -> dict[str, list[str]]:
        """
        Record (re)connections this engine's master saw, as {minion: (stamp_ms, pid or '')},
        and put each minion on the engine's work set, due now. Returns note_start's answers.
        """
        k, conf, now = self.keys, self.conf, self.now_arg()
        minions = list(starts)

        def fill(b: Batch) -> None:
            for m in minions:
                stamp, pid = starts[m]
                b.script("note_start", [k.seq(m)], [engine, pid, stamp, self.lease_ms, conf.ttl, now])
            if minions:
                b.call("ZADD", k.active(engine), *[x for m in minions for x in (0, m)])
                b.call("EXPIRE", k.active(engine), conf.ttl)

        results = self.run(fill)
        answers = {m: [_text(x) for x in results[i]] for i, m in enumerate(minions)}
        self.gather_unswept([m for m, a in answers.items() if a[0] in ("new", "same")])
        return answers

    def gather_unswept(self, minions: list[str]) -> None:
        """Queue, for each minion, the not-yet-swept jobs that target it (the sweep has not yet)."""
        if not minions:
            return
        k, ttl = self.keys, self.conf.ttl
        rows = guard(self.conf, self.client.zrangebyscore, k.unswept, "-inf", f"({SWEPT}", None, None, True)
        jobs = [(_text(jid), float(score)) for jid, score in rows]
        if not jobs:
            return
        # one command per job for all the minions that started (a master restart: thousands at once)
        member = self.run(lambda b: [b.call("SMISMEMBER", k.targets(j), *minions) for j, _ in jobs])
        hits = []
        for (jid, published), flags in zip(jobs, member, strict=True):
            hits += [(m, jid, published) for m, flag in zip(minions, flags, strict=True) if flag]

        def fill(b: Batch) -> None:
            for m, jid, published in hits:
                b.call("ZADD", k.queue(m), "NX", published, jid)
                b.call("EXPIRE", k.queue(m), ttl)
            now = self.now()
            for m in {m for m, _, _ in hits}:  # listed, so `pending` and `stats` show it before the sweep
                b.call("ZADD", k.queues, now, m)
            b.call("EXPIRE", k.queues, ttl)

        if hits:
            self.run(fill)

    @property
    def lease_ms(self) -> int:
        return int(self.conf.claim_lease * 1000)

    PEEK = 50  # queue entries a step sees

    def take(self, engine: str, minion: str, peek: int = PEEK) -> SeqView | None:
        """The minion's sequence, held for `engine`; None while another engine holds it (see held_by)."""
        k, now = self.keys, self.now_arg()
        (r,) = self.run(
            lambda b: b.script(
                "seq_take", [k.seq(minion), k.queue(minion)], [engine, self.lease_ms, peek, self.conf.ttl, now]
            )
        )
        if _text(r[0]) != "mine":
            self.held_by = _text(r[1])
            return None
        head = r[8]
        return SeqView(
            now_ms=int(r[1]),
            proc=_text(r[2]),
            started_ms=int(float(r[3])),
            cur=_text(r[4]),
            wait_ms=int(float(r[5])),
            acks=bool(_text(r[6])),
            pend_ms=int(float(r[7] or 0)),
            queue=[(_text(head[i]), float(head[i + 1])) for i in range(0, len(head), 2)],
            born_ms=int(float(r[9])),
            pub=_text(r[10]),
        )

    def _pair_args(
        self, minion: str, view: SeqView, jid: str, published: float, mode: str, fresh: str = ""
    ) -> list[Any]:
        conf = self.conf
        return [
            minion,
            view.proc,
            view.started_ms,
            int(published * 1000),
            mode,
            conf.max_attempts,
            int(conf.replay_interrupted),
            conf.ttl,
            conf.max_refusals,
            self.now_arg(),
            view.born_ms,
            fresh,
            conf.replay_jid,
            jid,
        ]

    def _pair_keys(self, jid: str) -> list[str]:
        k = self.keys
        return [k.job(jid), k.targets(jid), k.returned(jid), k.retry(jid)]

    def look(
        self, minion: str, view: SeqView, only: str | None = None, entries: list[tuple[str, float]] | None = None
    ) -> list[Look]:
        """Where each queued job (or only the one jid, or the given entries) stands for the minion's process."""
        if entries is None:
            entries = [e for e in view.queue if only is None or e[0] == only]
        results = self.run(
            lambda b: [
                b.script("pair", self._pair_keys(jid), self._pair_args(minion, view, jid, published, "look"))
                for jid, published in entries
            ]
        )
        looks = []
        for (jid, published), r in zip(entries, results, strict=True):
            state = _text(r[0])
            if state == "done":
                looks.append(Look(jid, published, state, final=_text(r[1])))
            else:
                looks.append(
                    Look(jid, published, state, int(r[1]), bool(r[2]), unpack(r[3]), int(float(r[4])), int(r[5]))
                )
        return looks

    def claim(
        self, minion: str, view: SeqView, jid: str, published: float, mode: str = "claim", fresh: str = ""
    ) -> Claim:
        """
        Atomically take the next replay of jid to the minion's process (see _PAIR); `fresh`
        is the jid to publish under when the original cannot be used.
        """
        args = self._pair_args(minion, view, jid, published, mode, fresh)
        (r,) = self.run(lambda b: b.script("pair", self._pair_keys(jid), args))
        state = _text(r[0])
        if state == "claimed":
            return Claim(jid, state, int(r[1]), unpack(r[2]), kind=_text(r[3]), pub_jid=_text(r[4]))
        return Claim(jid, state, int(r[1]) if len(r) > 1 and not isinstance(r[1], bytes) else 0)

    def seq_set(self, engine: str, minion: str, **fields: Any) -> bool:
        """
        Move the minion's sequence if `engine` still holds it. A value "+<ms>" is stored
        as Redis' now plus ms; "" deletes the field.
        """
        args: list[Any] = [engine, self.conf.ttl, self.now_arg()]
        for name, value in fields.items():
            args += [name, value]
        (r,) = self.run(lambda b: b.script("seq_set", [self.keys.seq(minion)], args))
        return bool(r)

    def release(self, jid: str, minion: str, kind: str = "attempt") -> None:
        self.run(lambda b: b.script("release", [self.keys.retry(jid)], [minion, kind, self.conf.ttl]))

    def settle(self, jid: str, minion: str, state: str, by: str = "") -> bool:
        """Mark a pair final (superseded, ...) unless it returned or is final already."""
        k = self.keys
        (r,) = self.run(
            lambda b: b.script(
                "settle", [k.targets(jid), k.returned(jid), k.retry(jid)], [minion, state, by, self.conf.ttl]
            )
        )
        return bool(r)

    def dequeue(self, minion: str, jids: Iterable[str]) -> None:
        jids = list(jids)
        if jids:
            self.run(lambda b: b.call("ZREM", self.keys.queue(minion), *jids))

    def schedule(self, engine: str, minion: str, due_ms: int | None) -> None:
        """Put the minion on the engine's work set at due_ms (Redis clock), or take it off (None)."""
        k = self.keys
        if due_ms is None:
            self.run(lambda b: b.call("ZREM", k.active(engine), minion))
        else:
            self.run(
                lambda b: (
                    b.call("ZADD", k.active(engine), due_ms, minion),
                    b.call("EXPIRE", k.active(engine), self.conf.ttl),
                )
            )

    def take_due(self, engine: str, limit: int) -> tuple[int, list[str], int | None]:
        """(Redis now in ms, minions due, the next due time after them or None)."""
        (r,) = self.run(lambda b: b.script("take_due", [self.keys.active(engine)], [limit, self.now_arg()]))
        nxt = _text(r[2])
        return int(r[0]), [_text(m) for m in r[1]], int(float(nxt)) if nxt else None

    def rewind(self, engine: str, chunk: int = 1000) -> list[str]:
        """Make every minion on the engine's work set due now (`chunk` per script call); returns them."""
        moved: list[str] = []
        while True:
            (r,) = self.run(lambda b: b.script("rewind", [self.keys.active(engine)], [self.now_arg(), chunk]))
            moved += [_text(m) for m in r]
            if len(r) < chunk:
                return moved

    def work_set(self, engine: str) -> list[str]:
        """Every minion on the engine's work set."""
        return [_text(m) for m in guard(self.conf, self.client.zrange, self.keys.active(engine), 0, -1)]

    def owners(self, minions: list[str]) -> dict[str, str]:
        """The engine holding each minion's sequence ('' if none)."""
        found = self.run(lambda b: [b.call("HGET", self.keys.seq(m), "owner") for m in minions]) if minions else []
        return {m: _text(o) if o else "" for m, o in zip(minions, found, strict=True)}

    def heartbeat(self, engine: str, dead_after_ms: int) -> list[str]:
        """Say this engine is alive; returns the engines that have gone silent."""
        (r,) = self.run(
            lambda b: b.script("heartbeat", [self.keys.engines], [engine, dead_after_ms, self.conf.ttl, self.now_arg()])
        )
        return [_text(e) for e in r if _text(e) != engine]

    def adopt(self, engine: str, dead: str) -> list[str]:
        """Move a silent engine's minions to this engine's work set."""
        k = self.keys
        (r,) = self.run(
            lambda b: b.script("adopt", [k.active(dead), k.active(engine), k.engines], [dead, self.conf.ttl])
        )
        return [_text(m) for m in r]

    def record_minion_run(self, jid: str, minion: str, job: dict) -> bool:
        """Record a refused run the minion started itself (see _MINION_RUN); False if jid is known."""
        k, ttl = self.keys, self.conf.ttl
        keys = [k.job(jid), k.targets(jid), k.retry(jid), k.alias(jid)]
        created, _, _ = self.run(
            lambda b: (
                b.script("minion_run", keys, [ttl, pack(job), minion, self.now_arg()]),
                b.call("ZADD", k.jobs, "NX", job["time"], jid),  # a no-op for a known job: it is there
                b.call("EXPIRE", k.jobs, ttl),
            )
        )
        return bool(created)

    def enqueue_refused(self, engine: str, pairs: list[tuple[str, str]], hold_ms: int = 0) -> list[tuple[str, str]]:
        """
        Queue refused (jid, minion) pairs in publish order and wake whoever serves each minion.
        Returns the pairs whose job is not recorded yet (the returner is behind): try again later.
        """
        k, ttl = self.keys, self.conf.ttl
        jids = sorted({jid for jid, _ in pairs})
        scores = self.run(lambda b: [b.call("ZSCORE", k.jobs, jid) for jid in jids])
        published = {jid: float(s) for jid, s in zip(jids, scores, strict=True) if s is not None}
        known = [(jid, m) for jid, m in pairs if jid in published]

        def fill(b: Batch) -> None:
            for jid, m in known:
                b.call("ZADD", k.queue(m), "NX", published[jid], jid)
                b.call("EXPIRE", k.queue(m), ttl)
                b.call("ZADD", k.queues, published[jid], m)
            b.call("EXPIRE", k.queues, ttl)

        if known:
            self.run(fill)
            self.wake([m for _, m in known], engine, hold_ms)
        return [(jid, m) for jid, m in pairs if jid not in published]

    def wake(self, minions: list[str], fallback: str | None, hold_ms: int = 0) -> None:
        """Put minions on the work set of the engine serving each (or `fallback`'s), due in hold_ms."""
        minions = list(dict.fromkeys(minions))
        if not minions:
            return
        k, ttl = self.keys, self.conf.ttl
        owners = self.owners(minions)
        due = int(self.now() * 1000) + hold_ms

        def fill(b: Batch) -> None:
            for m, owner in owners.items():
                engine = owner or fallback
                if engine:
                    b.call("ZADD", k.active(engine), "LT", due, m)
                    b.call("EXPIRE", k.active(engine), ttl)

        self.run(fill)

    def active_count(self) -> int:
        """Minions on some engine's work set."""
        engines = [_text(e) for e in guard(self.conf, self.client.zrange, self.keys.engines, 0, -1)]
        counts = self.run(lambda b: [b.call("ZCARD", self.keys.active(e)) for e in engines]) if engines else []
        return sum(int(c) for c in counts)

    def sequence(self, minion: str) -> dict[str, str]:
        """The minion's replay sequence fields, for operator views."""
        raw = guard(self.conf, self.client.hgetall, self.keys.seq(minion))
        return {_text(f): _text(v) for f, v in raw.items()}

    def _count(self, batch: Batch, counter: str, n: int) -> None:
        batch.call("HINCRBY", self.keys.stats, counter, n)
        batch.call("EXPIRE", self.keys.stats, self.conf.ttl)

    def count(self, counter: str, n: int) -> None:
        """Add n to one of the `stats` counters."""
        if n:
            self.run(lambda b: self._count(b, counter, n))

    COUNTERS = ("queued", "replays", "refusals", "superseded", "exhausted", "interrupted")

    def stats(self) -> dict[str, Any]:
        """Counts for operators and metrics (one pipeline, plus the pending listing)."""
        k, now = self.keys, self.now()
        jobs, unswept, counters = self.run(
            lambda b: (
                b.call("ZCOUNT", k.jobs, now - self.conf.ttl, "+inf"),
                b.call("ZCOUNT", k.unswept, "-inf", f"({SWEPT}"),
                b.call("HGETALL", k.stats),
            )
        )
        pending = self.pending(self.queued_minions())
        published = [from_iso(e["published_at"]) for entries in pending.values() for e in entries]
        counters = {_text(f): int(v) for f, v in counters.items()}
        return {
            "tracked_jobs": int(jobs),
            "unswept_jobs": int(unswept),
            "minions_replaying": self.active_count(),
            "pending_total": sum(len(e) for e in pending.values()),
            "pending_by_minion": {m: len(e) for m, e in sorted(pending.items()) if e},
            "oldest_pending_age_seconds": round(now - min(published), 1) if published else 0,
            **{name: counters.get(name, 0) for name in self.COUNTERS},
        }

    def stage_refusal(self, batch: Batch, jid: str, minion: str, run_jid: str) -> None:
        """Salt refused to start the job on minion (a state run was running): still owed."""
        k = self.keys
        args = [self.conf.ttl, minion, self.now_arg(), run_jid]
        batch.script("record_refusal", [k.targets(jid), k.returned(jid), k.retry(jid)], args)

    def stage_delivery(self, batch: Batch, jid: str, minion: str, at_ms: int) -> None:
        """A minion acknowledged the job (``salt/job/<jid>/start/<id>``, Salt 3008 start_event)."""
        k = self.keys
        batch.script("record_delivery", [k.targets(jid), k.returned(jid), k.retry(jid)], [self.conf.ttl, minion, at_ms])

    # -- rate limit (engine) ------------------------------------------------------------

    def take_tokens(self, wanted: int) -> int:
        """Replays allowed now by the fleet-wide `max_replays_per_second` bucket."""
        rate = self.conf.max_replays_per_second
        burst = max(1, math.ceil(rate / 10))  # 100 ms worth: any one-second window stays near `rate`
        now_ms = int(self.now() * 1000)
        (granted,) = self.run(lambda b: b.script("take_tokens", [self.keys.rate], [rate, burst, now_ms, wanted]))
        return int(granted)

    # -- operator views (runner) ------------------------------------------------------

    def job(self, jid: str) -> dict | None:
        blob = guard(self.conf, self.client.get, self.keys.job(jid))
        return unpack(blob) if blob else None

    def queued_minions(self) -> list[str]:
        return [_text(m) for m in guard(self.conf, self.client.zrange, self.keys.queues, 0, -1)]

    def view(self, minion: str) -> SeqView:
        """The minion's sequence read-only, as the next step would see it (operator views)."""
        k = self.keys
        seq, queue = self.run(
            lambda b: (b.call("HGETALL", k.seq(minion)), b.call("ZRANGE", k.queue(minion), 0, -1, "WITHSCORES"))
        )
        f = {_text(x): _text(v) for x, v in seq.items()}
        return SeqView(
            now_ms=int(self.now() * 1000),
            proc=f.get("proc", ""),
            # No process known yet: everything queued is owed to the next one.
            started_ms=int(float(f["started"])) if f.get("proc") else 2**62,
            cur=f.get("cur", ""),
            wait_ms=int(float(f.get("wait", 0))),
            acks=bool(f.get("acks")),
            pend_ms=int(float(f.get("pend", 0))),
            queue=[(_text(j), float(score)) for j, score in queue],
            born_ms=int(float(f.get("born", 0))),
            pub=f.get("pub", ""),
        )

    # 'after': published after the process connected. If the minion is up, Salt delivered it;
    # if it went down since, it is owed to the next process: listed as pending either way.
    PENDING_STATES = {
        "owed": "pending",
        "after": "pending",
        "refused": "refused",
        "acked": "pending",
        "sent": "running",
    }

    def pending(self, minions: list[str]) -> dict[str, list[dict]]:
        """
        Each minion's owed jobs in the order they will run (publish order), with the
        replay in flight first. Jobs it returned or that are final leave the index.
        """
        from .replay import supersede_key  # the engine's rule, shared

        out: dict[str, list[dict]] = {}
        stale: dict[str, list[str]] = {}
        empty: list[str] = []
        for m in minions:
            view = self.view(m)
            looks = self.look(m, view) if view.queue else []
            stale[m] = [lk.jid for lk in looks if lk.state == "done" and lk.jid != view.cur]
            if len(stale[m]) == len(looks):
                empty.append(m)
            live = [lk for lk in looks if lk.state in self.PENDING_STATES]
            keys = {lk.jid: supersede_key(lk.job, self.conf.supersede_functions) for lk in live}
            newest = {key: lk.jid for lk in live if lk.state != "sent" and (key := keys[lk.jid])}
            entries = []
            for lk in live:
                entry = {
                    "jid": lk.jid,
                    "fun": lk.job.get("fun"),
                    "arg": lk.job.get("arg", []),
                    "attempts": lk.attempts,
                    "published_at": iso(lk.published),
                    "state": "in_flight" if lk.jid == view.cur else self.PENDING_STATES[lk.state],
                }
                if lk.state == "sent" and lk.jid != view.cur:
                    continue  # delivered to this process and running: not pending
                key = keys[lk.jid]
                if key and lk.state != "sent" and newest[key] != lk.jid:
                    entry["superseded_by"] = newest[key]
                entries.append(entry)
            entries.sort(key=lambda e: e["state"] != "in_flight")  # stable: publish order otherwise
            if view.cur and entries and entries[0]["state"] == "in_flight":
                for e in entries[1:]:
                    e["waiting_behind"] = view.cur
            out[m] = entries
        self._drop_stale({m: js for m, js in stale.items() if js}, empty)
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
        if empty:  # a sweep may have queued for one of them meanwhile: it must stay listed
            sizes = self.run(lambda b: [b.call("ZCARD", self.keys.queue(m)) for m in empty])
            back = [m for m, n in zip(empty, sizes, strict=True) if n]
            if back:
                now = self.now()
                self.run(lambda b: [b.call("ZADD", self.keys.queues, now, m) for m in back])

    def flush(self, minion: str, jids: list[str] | None = None, dry_run: bool = False) -> list[str]:
        """
        Cancel what minion is owed (all, or the given jids): queued, not yet swept, or in
        flight. Returns the jids cancelled; with dry_run, those it would cancel, changing nothing.
        """
        if jids is None:
            jids, _ = self.owed_candidates(minion)
        k, args = self.keys, [minion, self.conf.ttl, "1" if dry_run else "0"]
        results = self.run(lambda b: [b.script("flush", [k.targets(j), k.returned(j), k.retry(j)], args) for j in jids])
        flushed = [jid for jid, done in zip(jids, results, strict=False) if done]
        if dry_run:
            return flushed
        # The replay in flight stays queued: the engine keeps the next job waiting until it ends.
        running = _text(guard(self.conf, self.client.hget, k.seq(minion), "cur") or b"")
        self.dequeue(minion, [j for j in jids if j != running])
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
        now = self.now()
        minions = {}
        for m in sorted(_text(t) for t in targets):
            minions[m] = minion_state(m, returned, fields, job, now, self.conf.timeout)
        if job.get("excluded"):
            minions = {}
        return {"job": job, "minions": minions, "swept": unswept is None or float(unswept) >= SWEPT}

    def missing(self, jid: str) -> list[str]:
        """Targets of jid that have not returned."""
        k = self.keys
        return sorted(_text(m) for m in guard(self.conf, self.client.sdiff, [k.targets(jid), k.returned(jid)]))

    def processes(self, minions: list[str]) -> dict[str, tuple[str, bool]]:
        """Each minion's last identified process (pid, '' none) and whether a newer connection's pid is being asked."""
        found = self.run(lambda b: [b.call("HMGET", self.keys.seq(m), "proc", "pend") for m in minions])
        return {m: (_text(proc) if proc else "", bool(pend)) for m, (proc, pend) in zip(minions, found, strict=True)}

    def prepare_retry(self, jid: str, minions: list[str], send: set[str], fresh: str) -> RetryClaim:
        """
        Reset and queue the minions of jid that did not return and have nothing in flight;
        mark those in `send` sent to their current process under `fresh` (see retry_claim).
        """
        k, ttl, now = self.keys, self.conf.ttl, self.now()
        procs = self.processes(minions) if minions else {}
        args: list[Any] = [ttl, repr(now), self.now_arg(), int(self.conf.replay_wait * 1000), fresh]
        for m in minions:
            proc, pending = procs[m]
            args += [m, proc, "1" if pending else "0", "1" if m in send else "0"]
        (r,) = self.run(lambda b: b.script("retry_claim", [k.targets(jid), k.returned(jid), k.retry(jid)], args))
        claim = RetryClaim(*([_text(m) for m in part] for part in r))
        published = (self.job(jid) or {}).get("time", now)

        def fill(b: Batch) -> None:
            for m in claim.reset:
                b.call("ZADD", k.queue(m), published, jid)
                b.call("EXPIRE", k.queue(m), ttl)
                b.call("ZADD", k.queues, now, m)
            b.call("EXPIRE", k.queues, ttl)

        if claim.reset:
            self.run(fill)
        return claim


@dataclass
class RetryClaim:
    reset: list[str]  # given a fresh budget and queued
    claimed: list[str]  # of those, marked sent under the fresh jid: publish to them now
    busy: list[str]  # the job is in flight to the minion's current process: left alone


def minion_state(
    minion: str, returned: set[str], fields: dict[str, str], job: dict, now: float, timeout: float
) -> dict:
    """One minion's state in a job, as `status` shows it."""
    attempts = int(fields.get(f"a:{minion}", 0))
    state: dict[str, Any] = {"attempts": attempts}
    sent = fields.get(f"t:{minion}")
    if sent:
        state["last_replay_at"] = iso(int(float(sent)) / 1000)
    if minion in returned:
        return {"state": "returned", **state}
    final = fields.get(f"x:{minion}")
    if final:
        if fields.get(f"s:{minion}"):
            state["superseded_by"] = fields[f"s:{minion}"]
        return {"state": final, **state}
    refused = fields.get(f"k:{minion}")
    if refused is not None and refused == (sent or "0"):
        return {"state": "refused", **state, "refusals": int(fields.get(f"c:{minion}", 0))}
    if fields.get(f"d:{minion}"):
        return {"state": "delivered", **state, "delivered_at": iso(int(fields[f"d:{minion}"]) / 1000)}
    if sent:
        return {"state": "replayed", **state}
    queued_at = fields.get(f"q:{minion}")
    if queued_at is not None or now - job.get("time", 0) >= timeout:
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
