"""Record that a minion acknowledged a job (Salt 3008's job start event)."""

SCRIPT = """
-- KEYS: targets, returned, retry   ARGV: ttl, minion, now_ms
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[3], 'd:' .. ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""
