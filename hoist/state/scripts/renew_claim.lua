-- renew_claim: keep a claim alive (the owner's heartbeat).
--
-- KEYS[1]  the artifact's owner (string: the token of the task holding it)
-- KEYS[2]  the deferred schedule (sorted set, scores in ms since the epoch)
-- ARGV[1]  the task's token
-- ARGV[2]  the lease, ms
-- ARGV[3]  the watchdog's new due time, ms since the epoch
-- ARGV[4]  the artifact id
--
-- Returns 0 if the token no longer owns the artifact (nothing changed), else
-- 1: the owner's expiry is reset to the lease and the watchdog pushed to
-- ARGV[3], only if the artifact is still in the schedule (XX: a settled
-- artifact is not put back).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[4])
return 1
