-- states: the state of many records in one call.
--
-- KEYS[1..] the records (hashes)
--
-- Returns one entry per key, in order: its 'state', or false (nil to the
-- client) where there is no record.
local states = {}
for i, key in ipairs(KEYS) do states[i] = redis.call('HGET', key, 'state') end
return states
