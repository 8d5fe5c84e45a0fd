"""Move a minion's replay sequence, only for the engine that holds it."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: seq   ARGV: engine, ttl, now, field, value, ...  (value '' deletes the field)
-- Only the engine that holds the sequence may move it.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local now = now_ms(ARGV[3])
for i = 4, #ARGV, 2 do
  local value = ARGV[i + 1]
  if value == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else
    if string.sub(value, 1, 1) == '+' then value = now + tonumber(string.sub(value, 2)) end
    redis.call('HSET', KEYS[1], ARGV[i], value)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return now
"""
)
