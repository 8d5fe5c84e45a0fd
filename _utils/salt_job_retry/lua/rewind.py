"""Make every minion on a (re)started engine's work set due now, a chunk at a time."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: active   ARGV: now, limit.  An engine (re)starting does not know what its minions
-- wait for (that lived in the old process): make them due now, `limit` at a time.
local now = now_ms(ARGV[1])
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #later do redis.call('ZADD', KEYS[1], now, later[i]) end
return later
"""
)
