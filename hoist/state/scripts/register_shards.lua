-- register_shards: register one rank's files of a sharded checkpoint.
--
-- KEYS[1]  the checkpoint (hash: 'world_size', and 'rank:<n>' -> ids)
-- ARGV[1]  the rank
-- ARGV[2]  the rank's artifact ids (a JSON list)
-- ARGV[3]  the world size
-- ARGV[4]  the checkpoint's retention, seconds
--
-- Returns -1 if the checkpoint was registered with another world size
-- (nothing changed); else the number of ranks registered so far.
local ws = redis.call('HGET', KEYS[1], 'world_size')
if ws and ws ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[1], 'world_size', ARGV[3], 'rank:' .. ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('HLEN', KEYS[1]) - 1
