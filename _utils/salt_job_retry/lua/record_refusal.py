"""Record that Salt refused to start a state run on a minion: the pair stays owed."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: targets, returned, retry   ARGV: ttl, minion, now, jid the refused run had
-- Only a refusal of the latest delivery (j:<id>) counts: a late copy of an older one must
-- not mark the re-send that replaced it.
-- Salt refused to start the job (another state run was running): not a return. The
-- marker names the delivery it refused ('0': the original publish), so a later
-- replay of the pair clears it.
local m = ARGV[2]
if redis.call('SISMEMBER', KEYS[1], m) == 0 then return 0 end
if redis.call('SISMEMBER', KEYS[2], m) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 1 then return 0 end
local latest = redis.call('HGET', KEYS[3], 'j:' .. m)
if latest and latest ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[3], 'k:' .. m, redis.call('HGET', KEYS[3], 't:' .. m) or '0', 'r:' .. m, now_ms(ARGV[3]))
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""
)
