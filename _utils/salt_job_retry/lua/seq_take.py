"""Take a minion's replay sequence for one engine (unless another holds a live lease), with its queue's head."""

from .clock import NOW

SCRIPT = (
    NOW
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
-- the process's newest connection is through another master: only that engine may publish
-- to it, whatever the lease says (a failover that moved, an old master resumed or partitioned)
local via = redis.call('HGET', seq, 'via')
if via and via ~= engine and claimant ~= engine then return {'other', via} end
if owner and owner ~= engine and lease >= now and claimant ~= engine and via ~= engine then
  return {'other', owner}
end
redis.call('HSET', seq, 'owner', engine, 'lease', now + tonumber(ARGV[2]))
redis.call('EXPIRE', seq, ARGV[4])
local f = redis.call('HMGET', seq, 'proc', 'started', 'cur', 'wait', 'acks', 'pend', 'born', 'pub', 'via', 'via_at')
local head = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
return {'mine', now, f[1] or '', f[2] or '0', f[3] or '', f[4] or '0', f[5] or '', f[6] or '', head,
        f[7] or '0', f[8] or '', f[9] or '', f[10] or '0'}
"""
)
