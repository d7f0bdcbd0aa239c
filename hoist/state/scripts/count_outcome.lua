-- count_outcome: add one job outcome to the fleet's monotonic counters (hoist.state.counters).
--
-- KEYS[1]  the counters (hash of field -> number; never expires, never decreases)
-- KEYS[2]  the artifact's record (hash; read for 'enqueued_at', seconds since the epoch)
-- ARGV[1]  the store's key (16 hex, as leases and throttle ceilings use it)
-- ARGV[2]  attempts to add (0 or 1)
-- ARGV[3]  the failed attempt's error class ('' when it did not fail)
-- ARGV[4]  bytes uploaded to add
-- ARGV[5]  '1' when the artifact was verified in the store now, else ''
-- ARGV[6]  now, seconds since the epoch
-- ARGV[7]  lease waits to add (0 or 1)
-- ARGV[8..] the histogram's upper bounds, seconds, ascending (without +Inf)
--
-- Histogram buckets are cumulative, as Prometheus serves them: one outcome
-- raises every bucket whose bound it is at or under, and '+Inf'. Returns 1.
local store = ARGV[1]
local function add(name, amount)
  if tonumber(amount) ~= 0 then redis.call('HINCRBY', KEYS[1], name .. '|' .. store, amount) end
end
add('attempts', ARGV[2])
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[1], 'failures|' .. store .. '|' .. ARGV[3], 1) end
add('bytes', ARGV[4])
add('lease_waits', ARGV[7])
if ARGV[5] == '1' then
  local logged = tonumber(redis.call('HGET', KEYS[2], 'enqueued_at'))
  if logged then
    local took = math.max(0, tonumber(ARGV[6]) - logged)
    for i = 8, #ARGV do
      if took <= tonumber(ARGV[i]) then
        redis.call('HINCRBY', KEYS[1], 'verified_bucket|' .. store .. '|' .. ARGV[i], 1)
      end
    end
    redis.call('HINCRBY', KEYS[1], 'verified_bucket|' .. store .. '|+Inf', 1)
    redis.call('HINCRBYFLOAT', KEYS[1], 'verified_sum|' .. store, took)
  end
end
return 1
