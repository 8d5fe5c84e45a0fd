"""
A Lua function shared by the scripts that compare times: now in ms on Redis' own clock.

Every script that compares times reads Redis' clock, so masters whose clocks disagree
still agree on leases and deadlines. An ARGV "now" overrides it (tests with a fake clock).
"""

NOW = """local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
