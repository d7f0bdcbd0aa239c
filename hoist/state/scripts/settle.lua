-- settle: record an outcome, count it, and let go of the claim and the leases.
--
-- KEYS[1]  the artifact's record (hash)
-- KEYS[2]  the artifact's owner (string)
-- KEYS[3]  the deferred schedule (sorted set, scores in ms since the epoch)
-- KEYS[4]  the fleet's counters (hash; see count_outcome_function.lua)
-- KEYS[5..] leases to release (sorted sets of holders' tokens)
-- ARGV[1]  the task's token
-- ARGV[2]  the artifact id
-- ARGV[3]  when to send it again, ms since the epoch; '' to take it out of the schedule
-- ARGV[4]  the record's retention, seconds; '' to keep it for ever (not finished)
-- ARGV[5]  n, how many of the next arguments are the outcome to count (0: count nothing)
-- ARGV[6..5+n] the outcome, as count_outcome_function.lua reads it
-- ARGV[6+n..] field/value pairs to write (at least 'state')
--
-- The owner is deleted only if the token still holds it. 'deliveries' is
-- reset to 0: an outcome was reached. The count comes in the same script, so
-- it is never ahead of the record nor lost after it. Returns 1.
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
for i = 5, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
local counted = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'deliveries', 0, unpack(ARGV, 6 + counted))
if ARGV[4] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if counted > 0 then count_outcome(KEYS[4], KEYS[1], ARGV, 6, 5 + counted) end
return 1
