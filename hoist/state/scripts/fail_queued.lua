-- fail_queued: fail a record whose message never reached the broker, unless
-- a worker has it already (a send can fail after the broker took the message).
--
-- KEYS[1]  the artifact's record (hash)
-- ARGV[1]  now, seconds since the epoch (finished_at)
-- ARGV[2]  the error to show
--
-- Returns 1 if the record was 'queued' (it is now 'failed'); else 0 (no
-- record, or not queued: nothing changed).
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[1], 'error', ARGV[2])
return 1
