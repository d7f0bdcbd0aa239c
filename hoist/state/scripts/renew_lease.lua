-- renew_lease: push a held lease's expiry forward.
--
-- KEYS[1]  the limit (sorted set: holders' tokens scored by expiry, ms since the epoch)
-- ARGV[1]  the holder's token
-- ARGV[2]  the new expiry, ms since the epoch
-- ARGV[3]  the limit key's own time to live, ms
--
-- Returns 0 if the token holds no place (it expired and was dropped; nothing
-- changed); else 1.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
