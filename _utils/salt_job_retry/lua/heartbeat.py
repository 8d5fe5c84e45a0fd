"""Say an engine is alive; return the engines gone silent."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: engines   ARGV: engine, dead_after_ms, ttl, now.  Returns engines gone silent.
local now = now_ms(ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
"""
)
