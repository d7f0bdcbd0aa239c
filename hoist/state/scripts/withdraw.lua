-- withdraw: a rank takes back an upload no worker has started, as superseded.
--
-- KEYS[1]  the artifact's record (hash)
-- KEYS[2]  the artifact's owner (string)
-- KEYS[3]  the deferred schedule (sorted set)
-- ARGV[1]  the artifact id
-- ARGV[2]  now, seconds since the epoch (finished_at)
-- ARGV[3]  the record's retention, seconds
-- ARGV[4]  why, as the record shows it
--
-- Returns 1 if the record was queued or waiting, never tried and not owned
-- (it is now 'superseded' and out of the schedule); else 0 and nothing
-- changed: a worker has it, or tried it, or it has finished. A claim after
-- this finds a finished record and does nothing.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'waiting' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'superseded', 'finished_at', ARGV[2], 'superseded_by', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
