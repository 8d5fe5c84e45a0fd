"""Look at, or claim the next replay of, one (jid, minion) pair for the minion's current process."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: job, targets, returned, retry
-- ARGV: minion, proc, started_ms, published_ms, mode, max_attempts, replay_interrupted,
--       ttl, max_refusals, now, born_ms, fresh jid ('' if none), replay_jid mode, jid,
--       engine (claiming), via (engine of the process's newest connection, '' unknown), via_at
-- A claim records in j:<id> the jid the replay goes out under: the original, or the fresh
-- one (replay_jid: new, or a refused run: the minion's jid queue holds the original).
-- Where one (jid, minion) stands for the minion process `proc` that connected at
-- started_ms; mode 'look' only reads, 'claim'/'again' take the next replay.
--   done      returned, final, expired, or not a target: drop it from the queue
--   sent      already published to this process (by a replay): wait for its return; not if
--             another engine than `via` published it at or after that newest connection (the
--             process had left its master): then owed again, under the same jid
--   after     published after the process connected: Salt delivered it
--   refused   the last delivery returned Salt's "state run already running" refusal
--   acked     acknowledged by an older process, which died before returning
--   owed      never reached this process: the next replay
local m, proc, mode = ARGV[1], ARGV[2], ARGV[5]
if redis.call('SISMEMBER', KEYS[3], m) == 1 then return {'done', 'returned'} end
if redis.call('SISMEMBER', KEYS[2], m) == 0 then return {'done', 'unknown'} end
local r = KEYS[4]
local f = redis.call('HMGET', r, 'x:' .. m, 'p:' .. m, 't:' .. m, 'k:' .. m, 'd:' .. m, 'a:' .. m, 'c:' .. m, 'r:' .. m,
                     'j:' .. m, 'u:' .. m, 'e:' .. m)
local via = ARGV[16] or ''
-- published through another master than the process's newest connection, after it connected
-- there, and never acknowledged: it went to a master the process had left
local astray = f[11] and not f[5] and via ~= '' and f[11] ~= via and tonumber(f[3] or '0') >= tonumber(ARGV[17] or '0')
-- u:<id>: the last publish (under j:<id>) may have gone out though it failed or was not
-- confirmed; sending it again under that same jid lets the minion drop a copy it has.
local function pub_jid(default)
  if (f[10] or mode == 'again' or astray) and f[9] then return f[9] end
  return default
end
if f[1] then return {'done', f[1]} end
local job = redis.call('GET', KEYS[1])
if not job then return {'done', 'expired'} end
local p, t, k, d = f[2], f[3], f[4], f[5]
local n, c = tonumber(f[6] or '0'), tonumber(f[7] or '0')
local state = 'owed'
if k and k == (t or '0') then state = 'refused'
elseif p == proc and not astray then state = 'sent'
elseif p == proc then state = 'owed'
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
  redis.call('HSET', r, 'c:' .. m, c + 1, 'p:' .. m, proc, 't:' .. m, now, 'j:' .. m, pub, 'e:' .. m, ARGV[15])
  redis.call('HDEL', r, 'k:' .. m, 'd:' .. m, 'u:' .. m)
  redis.call('PEXPIRE', r, ttl)
  return {'claimed', n, job, 'refusal', pub}
end
if mode == 'again' and state == 'sent' and c > 0 then
  -- sent again after a refusal: the original jid would be dropped, so a fresh one, as a refusal.
  -- It counts as one: a re-send that never reaches the minion must not go out forever.
  if c >= tonumber(ARGV[9]) then
    redis.call('HSET', r, 'x:' .. m, 'exhausted')
    redis.call('PEXPIRE', r, ttl)
    return {'exhausted', n}
  end
  local pub = pub_jid(ARGV[12] ~= '' and ARGV[12] or ARGV[14])
  redis.call('HSET', r, 'c:' .. m, c + 1, 't:' .. m, now, 'j:' .. m, pub, 'e:' .. m, ARGV[15])
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
  redis.call('HSET', r, 'a:' .. m, n + 1, 'p:' .. m, proc, 't:' .. m, now, 'j:' .. m, pub, 'e:' .. m, ARGV[15])
  redis.call('HDEL', r, 'd:' .. m, 'k:' .. m, 'u:' .. m)
  redis.call('PEXPIRE', r, ttl)
  return {'claimed', n + 1, job, 'attempt', pub}
end
return {state, n}
"""
)
