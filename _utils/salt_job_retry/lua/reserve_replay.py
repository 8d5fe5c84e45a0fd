"""Reserve the next replay slot of the fleet-wide rate limit (GCRA): now, or a time to come back."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: bucket   ARGV: interval_ms (1000 / rate), burst, now.  Returns {slot, now} (ms).
-- `tat` is when the bucket would be empty again. A slot is taken at every call, so
-- deferred minions queue up one interval apart instead of all asking again each interval:
-- one call per replay, whatever the backlog. A slot its minion no longer needs is lost
-- (fewer replays than the rate, never more).
local interval, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), now_ms(ARGV[3])
local tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'tat') or '0'), now)
local slot = math.max(now, tat - (burst - 1) * interval)
redis.call('HSET', KEYS[1], 'tat', tat + interval)
redis.call('PEXPIRE', KEYS[1], math.max(3600000, math.ceil(tat + interval - now)))
return {math.floor(slot), now}
"""
)
