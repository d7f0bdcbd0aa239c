-- throttle_down: a store answered "slow down": halve its fleet-wide ceiling,
-- at most once per window (every request in flight then sees the same answer).
--
-- KEYS[1]  the store's ceiling (hash: limit, base, changed, decreases)
-- KEYS[2]  the store's limit (sorted set of holders, by expiry in ms)
-- KEYS[3]  the set of store ids with a ceiling (for hoist status)
-- ARGV[6]  the store's id
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  the window, ms: no second decrease sooner
-- ARGV[3]  the ceiling's time to live, ms (it vanishes when no store answers throttle it)
-- ARGV[4]  the store's configured limit (0: none)
-- ARGV[5]  when the throttled request's lease was taken, ms since the epoch: a
--          request sent before the last decrease lowers nothing
--
-- Returns the ceiling now in force, as a string.
local now = tonumber(ARGV[1])
local changed = tonumber(redis.call('HGET', KEYS[1], 'changed') or '-1e18')
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or '0')
if limit > 0 and (now - changed < tonumber(ARGV[2]) or tonumber(ARGV[5]) < changed) then
  return tostring(limit)
end
if limit == 0 then
  -- The first decrease starts from what was in flight when the store objected.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  limit = redis.call('ZCARD', KEYS[2])
  local configured = tonumber(ARGV[4])
  if configured > 0 and (limit == 0 or configured < limit) then limit = configured end
  limit = math.max(limit, 1)
  redis.call('HSET', KEYS[1], 'base', limit)
end
limit = math.max(1, limit / 2)
redis.call('HSET', KEYS[1], 'limit', limit, 'changed', now)
redis.call('HINCRBY', KEYS[1], 'decreases', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[6])
return tostring(limit)
