"""Mark a pair final (superseded, ...) unless it returned or is final already."""

SCRIPT = """
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
