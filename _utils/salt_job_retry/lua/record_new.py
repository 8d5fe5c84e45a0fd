"""Record a published job: its packed record, and the TTLs of all of its keys together."""

SCRIPT = """
-- KEYS: job, alias, returned, retry   ARGV: ttl, job blob
-- The targets were added by a plain SADD + EXPIRE just before, in the same pipeline (no
-- Lua argument conversion for 10,000 ids; the EXPIRE is not in here, so a SADD that got
-- through is never left without a TTL by a script call that did not). Without a job record
-- they are inert. A job announced again (a replay under its own jid) renews every key of
-- the job together: a returned set that expired before the job would make every minion
-- that returned owed again.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[1])
return 1
"""
