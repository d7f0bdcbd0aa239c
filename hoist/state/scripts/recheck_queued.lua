-- recheck_queued: look at a queued artifact again later, unless a worker
-- claimed it meanwhile (the claim set its own due time).
--
-- KEYS[1]  the artifact's record (hash)
-- KEYS[2]  the deferred schedule (sorted set, scores in ms since the epoch)
-- ARGV[1]  when to look again, ms since the epoch
-- ARGV[2]  the artifact id
--
-- Returns 1 if the record is 'queued' (its due time is now ARGV[1]); else 0
-- (no record, or not queued: nothing changed).
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
