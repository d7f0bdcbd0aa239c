-- count_outcome: the function that adds one job outcome to the fleet's counters
-- (hoist.state.counters); settle.lua calls it, so an outcome is counted as it is recorded.
--
-- counters  the counters' key (hash of field -> number; never expires, never decreases)
-- record    the artifact's record key (hash; read for 'enqueued_at', seconds since the epoch)
-- args      a table holding, from index `at`:
--   [at]      the store's key (16 hex, as leases and throttle ceilings use it)
--   [at+1]    attempts to add (0 or 1)
--   [at+2]    the failed attempt's error class ('' when it did not fail)
--   [at+3]    bytes uploaded to add
--   [at+4]    '1' when the artifact was verified in the store now, else ''
--   [at+5]    now, seconds since the epoch
--   [at+6]    lease waits to add (0 or 1)
--   [at+7..last] the histogram's upper bounds, seconds, ascending (without +Inf)
--
-- Histogram buckets are cumulative, as Prometheus serves them: one outcome
-- raises every bucket whose bound it is at or under, and '+Inf'.
local function count_outcome(counters, record, args, at, last)
  local store = args[at]
  local function add(name, amount)
    if tonumber(amount) ~= 0 then redis.call('HINCRBY', counters, name .. '|' .. store, amount) end
  end
  add('attempts', args[at + 1])
  if args[at + 2] ~= '' then
    redis.call('HINCRBY', counters, 'failures|' .. store .. '|' .. args[at + 2], 1)
  end
  add('bytes', args[at + 3])
  add('lease_waits', args[at + 6])
  if args[at + 4] == '1' then
    local logged = tonumber(redis.call('HGET', record, 'enqueued_at'))
    if logged then
      local took = math.max(0, tonumber(args[at + 5]) - logged)
      for i = at + 7, last do
        if took <= tonumber(args[i]) then
          redis.call('HINCRBY', counters, 'verified_bucket|' .. store .. '|' .. args[i], 1)
        end
      end
      redis.call('HINCRBY', counters, 'verified_bucket|' .. store .. '|+Inf', 1)
      redis.call('HINCRBYFLOAT', counters, 'verified_sum|' .. store, took)
    end
  end
end
