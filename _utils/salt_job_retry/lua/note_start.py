"""Note a minion's (re)connection seen by one engine: a new process, or the same one again."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: seq   ARGV: engine, pid ('' = not known yet), stamp_ms (0: a probe answered now), lease_ms, ttl, now
-- A minion's (re)connection seen by `engine`. The pid tells a new process from the
-- same process seen again (another master, failover, a master restart). `via` is the
-- engine of the process's newest connection (`via_at`): only it may hold the sequence,
-- since a replay published through any other master may reach no one.
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
  local seen = stamp > 0 and stamp or now
  local via = redis.call('HGET', seq, 'via')
  -- A start noted late (an older connection) does not win over a newer one, nor does the start
  -- of the same connection seen through another master a moment later (hot multi-master: one
  -- connection to each master at once); a failover move takes master_alive_interval, seconds.
  local margin = (via and via ~= engine) and 2000 or 0
  if seen > tonumber(redis.call('HGET', seq, 'via_at') or '-1') + margin then
    redis.call('HSET', seq, 'via', engine, 'via_at', seen)
    via = engine
  end
  if via == engine or (not via and (owner == engine or not owner or lease < now)) then
    redis.call('HSET', seq, 'owner', engine, 'lease', now + tonumber(ARGV[4]))
    return {'same'}
  end
  return {'same-owned', via or owner}
end
-- A process found by asking (stamp 0) replaced the one we knew: it connected about now.
if proc and stamp == 0 then stamp = now end
if proc and stamp < born then return {'stale'} end
redis.call('HSET', seq, 'proc', pid, 'born', stamp, 'started', stamp, 'owner', engine, 'lease', now + tonumber(ARGV[4]),
           'via', engine, 'via_at', stamp)
redis.call('HDEL', seq, 'wait')
redis.call('EXPIRE', seq, ARGV[5])
return {'new'}
"""
)
