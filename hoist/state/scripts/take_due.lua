-- take_due: take the due entries of the deferred schedule, pushing each a
-- little into the future so that one taken by a sender that dies before
-- sending falls due again.
--
-- KEYS[1]  the deferred schedule (sorted set, scores in ms since the epoch)
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  the most entries to take
-- ARGV[3]  the guard: the taken entries' new due time, ms since the epoch
--
-- Returns the ids due at ARGV[1] or earlier, earliest first, at most ARGV[2].
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return due
