"""Record that a minion acknowledged a job (Salt 3008's job start event)."""

SCRIPT = """
-- KEYS: targets, returned, retry   ARGV: ttl, minion, now_ms, the jid acknowledged
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 0 end
-- the ack of an earlier publish (a refused re-send's, arriving late) is not this one's
local sent = redis.call('HGET', KEYS[3], 'j:' .. ARGV[2])
if ARGV[4] and ARGV[4] ~= '' and sent and sent ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[3], 'd:' .. ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""
