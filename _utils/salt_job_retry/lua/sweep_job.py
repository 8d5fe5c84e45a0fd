"""Sweep one job past its timeout: the minions still owed it, marked queued."""

SCRIPT = """
-- KEYS: targets, returned, retry, job   ARGV: ttl, now
-- Returns {minion, flag, ...} for every minion still owed the job: flag 1 newly
-- queued, 0 queued before, 2 acknowledged (running: indexed so that a restart
-- finds it, but not queued as missing).
local out = {}
if redis.call('EXISTS', KEYS[4]) == 0 then return out end  -- expired, or a retry's alias jid
for _, m in ipairs(redis.call('SDIFF', KEYS[1], KEYS[2])) do
  if redis.call('HEXISTS', KEYS[3], 'x:' .. m) == 0 then
    out[#out + 1] = m
    if redis.call('HEXISTS', KEYS[3], 'd:' .. m) == 1 then
      out[#out + 1] = 2
    else
      out[#out + 1] = redis.call('HSETNX', KEYS[3], 'q:' .. m, ARGV[2])
    end
  end
end
if #out > 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
return out
"""
