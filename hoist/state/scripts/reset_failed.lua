-- reset_failed: make a failed record queued again, for `hoist retry`.
--
-- KEYS[1]  the artifact's record (hash)
-- ARGV[1]  now, seconds since the epoch (retried_at)
--
-- Returns 0 if the record is not 'failed' (nothing changed); else 1: the
-- record is 'queued' with no attempts, deliveries or error, no finished_at,
-- and no expiry (pending work is kept until it finishes).
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'deliveries', 0, 'error', '',
           'retried_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'finished_at')
return 1
