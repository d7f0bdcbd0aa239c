-- throttle_up: a store under a ceiling answered cleanly: raise the ceiling by
-- 1/limit (one place more per limit's worth of clean answers), and lift it
-- once it is back at the configured limit (or at twice where throttling began).
--
-- KEYS[1]  the store's ceiling (hash: limit, base, changed, decreases)
-- KEYS[2]  the set of store ids with a ceiling
-- ARGV[3]  the store's id
-- ARGV[1]  the ceiling's time to live, ms
-- ARGV[2]  the store's configured limit (0: none)
--
-- Returns the ceiling now in force as a string, or '' once lifted (or absent).
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or '0')
if limit == 0 then return '' end
limit = limit + 1 / limit
local cap = tonumber(ARGV[2])
if cap <= 0 then cap = 2 * tonumber(redis.call('HGET', KEYS[1], 'base') or '1') end
if limit >= cap then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
  return ''
end
redis.call('HSET', KEYS[1], 'limit', limit)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return tostring(limit)
