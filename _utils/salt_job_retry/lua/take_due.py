"""Take the minions on an engine's work set that are due now, and the next due time."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: active   ARGV: limit, now.  Minions due now, and the next due time after them.
local now = now_ms(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {now, due, nxt[2] or ''}
"""
)
