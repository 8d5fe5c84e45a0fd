"""Record one minion's return: move it from the job's targets to its returned set."""

SCRIPT = """
-- KEYS: targets, returned   ARGV: ttl, minion
-- The minion moves from targets to returned: a pair is stored once, whether it returned
-- or not. "Owed" is "in targets and not in returned" (a replay's `new` may add a minion
-- that returned back to targets), "a target" is "in either". A second return of the same
-- minion changes nothing (not even the TTL: record_new renews returned with the job).
if redis.call('SMOVE', KEYS[1], KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""
