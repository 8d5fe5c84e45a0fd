"""Cancel what a minion is owed of one job (or only say whether it would)."""

SCRIPT = """
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
