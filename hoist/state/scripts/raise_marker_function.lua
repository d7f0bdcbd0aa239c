-- raise_marker_function: not a script but a function, put by the loader in
-- front of the scripts that raise a marker (raise_marker, create).
--
-- raise_marker(key, value, retention): set the marker at key to value,
-- expiring after retention seconds, unless it already holds value or a later
-- one (markers compare as strings: by order key). Returns 1 if raised, else 0.
local function raise_marker(key, value, retention)
  local current = redis.call('GET', key)
  if current and current >= value then return 0 end
  redis.call('SET', key, value, 'EX', retention)
  return 1
end
