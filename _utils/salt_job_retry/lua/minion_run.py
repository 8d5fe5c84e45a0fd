"""Record a minion's own state run that one of our replays made Salt refuse, as a refused job."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: job, targets, retry, alias   ARGV: ttl, job blob, minion, now
-- A state run the minion started itself (startup_states) that Salt refused because one of
-- our replays was running: had the minion been up, it would have run. Recorded as a job of
-- that minion, refused, so it goes out once the sequence reaches it. Never over a known job.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local m = ARGV[3]
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[1])
redis.call('SADD', KEYS[2], m)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'k:' .. m, '0', 'r:' .. m, now_ms(ARGV[4]))
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""
)
