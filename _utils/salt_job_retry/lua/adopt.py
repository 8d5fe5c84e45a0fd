"""Move a silent engine's minions to this engine's work set."""

SCRIPT = """
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
