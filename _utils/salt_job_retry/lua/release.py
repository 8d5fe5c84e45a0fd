"""Release a claim whose publish failed: the pair is owed again."""

SCRIPT = """
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
