"""An operator's retry of one job: fresh budgets, and the pairs to publish now marked sent."""

from .clock import NOW

SCRIPT = (
    NOW
    + """
-- KEYS: targets, returned, retry
-- ARGV: ttl, queued_at (epoch s), now, window_ms, fresh jid, then per minion: id, proc (its
--       last known pid, '' none), pending ('1': a newer connection's pid is being asked for), send
-- An operator's retry. A minion that had the job delivered less than window_ms ago — to its
-- process, to a process not identified yet ('retry'), or to its last known process while a
-- reconnection is being identified (it may be the same one) — has it in flight (a replay, or
-- another retry): it is left alone, so a second retry publishes nothing. Every other minion
-- that did not return gets a fresh budget; those to send now are marked sent to their process
-- (or 'retry' when it is not known) under the fresh jid before the publish, so the engine
-- does not replay the job to them as well.
local r, now, window, fresh = KEYS[3], now_ms(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local reset, claimed, busy = {}, {}, {}
for i = 6, #ARGV, 4 do
  local m, known, pending, send = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local proc = known
  if proc == '' or pending == '1' then proc = 'retry' end
  if redis.call('SISMEMBER', KEYS[1], m) == 1 and redis.call('SISMEMBER', KEYS[2], m) == 0 then
    local f = redis.call('HMGET', r, 'p:' .. m, 't:' .. m)
    local recent = f[1] and now - tonumber(f[2] or '0') < window
    if recent and (f[1] == proc or f[1] == 'retry' or f[1] == known) then
      busy[#busy + 1] = m
    else
      redis.call('HDEL', r, 'a:' .. m, 'l:' .. m, 'x:' .. m, 'd:' .. m, 'p:' .. m, 't:' .. m, 'k:' .. m, 'c:' .. m,
                 'u:' .. m, 's:' .. m, 'r:' .. m, 'e:' .. m)
      redis.call('HSET', r, 'q:' .. m, ARGV[2])
      reset[#reset + 1] = m
      if send == '1' then
        redis.call('HSET', r, 'p:' .. m, proc, 't:' .. m, now, 'j:' .. m, fresh)
        claimed[#claimed + 1] = m
      end
    end
  end
end
if #reset > 0 then redis.call('EXPIRE', r, ARGV[1]) end
return {reset, claimed, busy}
"""
)
