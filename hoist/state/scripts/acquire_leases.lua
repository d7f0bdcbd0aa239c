-- acquire_leases: take every lease or none, in one round trip.
--
-- KEYS[1..n]     the limits (sorted sets: holders' tokens scored by expiry, ms since the epoch)
-- KEYS[n+1..2n]  each limit's ceiling (hash; exists only while a store throttles:
--                its field 'limit' then caps the limit, see hoist.state.throttle)
-- ARGV[1]  the holder's token
-- ARGV[2]  now, ms since the epoch: members expiring by then are dropped
-- ARGV[3]  the lease's expiry, ms since the epoch
-- ARGV[4]  each limit key's own time to live, ms (two lease times: always past
--          every member's expiry, so an idle limit vanishes and a busy one never does)
-- ARGV[4 + i] the size of limit KEYS[i]; 0 or less: no limit (but holders are counted)
--
-- Returns 0 if some limit is full and the token holds none of its places
-- (only expired members were dropped); else 1, or 2 if a ceiling applied: the
-- token holds a place in every limit until ARGV[3].
local n = #KEYS / 2
local capped = false
for i = 1, n do
  local key = KEYS[i]
  local size = tonumber(ARGV[4 + i])
  local ceiling = redis.call('HGET', KEYS[n + i], 'limit')
  if ceiling then
    capped = true
    ceiling = math.max(1, math.floor(tonumber(ceiling)))
    if size <= 0 or ceiling < size then size = ceiling end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  if size > 0 and not redis.call('ZSCORE', key, ARGV[1])
     and redis.call('ZCARD', key) >= size then
    return 0
  end
end
for i = 1, n do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
if capped then return 2 end
return 1
