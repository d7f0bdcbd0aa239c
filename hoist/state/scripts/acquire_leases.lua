-- acquire_leases: take every lease or none, in one round trip.
--
-- KEYS[1..n] the limits (sorted sets: holders' tokens scored by expiry, ms since the epoch)
-- ARGV[1]  the holder's token
-- ARGV[2]  now, ms since the epoch: members expiring by then are dropped
-- ARGV[3]  the lease's expiry, ms since the epoch
-- ARGV[4]  each limit key's own time to live, ms (two lease times: always past
--          every member's expiry, so an idle limit vanishes and a busy one never does)
-- ARGV[4 + i] the size of limit KEYS[i]
--
-- Returns 0 if some limit is full and the token holds none of its places
-- (only expired members were dropped); else 1: the token holds a place in
-- every limit until ARGV[3].
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  if not redis.call('ZSCORE', key, ARGV[1])
     and redis.call('ZCARD', key) >= tonumber(ARGV[4 + i]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[3], ARGV[1])
  redis.call('PEXPIRE', key, ARGV[4])
end
return 1
