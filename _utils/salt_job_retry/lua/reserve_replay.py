"""Reserve the next replay slot of the fleet-wide rate limit (GCRA): now, or a time to come back."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: bucket   ARGV: interval_ms (1000 / rate), burst, now.  Returns {slot, now} (ms).
-- The slot is kept in the minion's sequence (`slot`) until a replay goes out in it, so an
-- engine restart or another engine taking the minion over does not book it again.
-- `tat` is when the bucket would be empty again. A slot is taken at every call, so
-- deferred minions queue up one interval apart instead of all asking again each interval:
-- one call per replay, whatever the backlog. A slot its minion no longer needs is lost
-- (fewer replays than the rate, never more).
local interval, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), now_ms(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'tat', 'at')
local tat, last = tonumber(f[1] or '0'), tonumber(f[2] or '0')
if now < last then tat = tat - (last - now) end  -- Redis' clock stepped back: so do the slots
tat = math.max(tat, now)
local slot = math.max(now, tat - (burst - 1) * interval)
redis.call('HSET', KEYS[1], 'tat', tat + interval, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.max(3600000, math.ceil(tat + interval - now)))
return {math.floor(slot), now}
"""
)
