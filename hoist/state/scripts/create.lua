-- create: create a record and index it, in one call (the rank's
-- file_artifact waits for it).
--
-- KEYS[1]  the artifact's record (hash)
-- KEYS[2]  the run's index (sorted set of artifact ids, by log time in s)
-- KEYS[3]  the list of runs (sorted set of run names, by last activity in s)
-- KEYS[4]  the deferred schedule (sorted set, scores in ms since the epoch)
-- KEYS[5]  the rank's failure counter (string; only read)
-- KEYS[6]  optional: the name's latest marker (string)
-- ARGV[1]  the artifact id
-- ARGV[2]  the run name
-- ARGV[3]  now, seconds since the epoch
-- ARGV[4]  the watchdog's first look, ms since the epoch
-- ARGV[5]  the retention of the index, the run list's entries and the marker, seconds
-- ARGV[6]  '1': only if no record is pending or done (a failed one is replaced); '' always
-- ARGV[7]  the marker's value, "<order key>|<artifact id>" (unused without KEYS[6])
-- ARGV[8..] the record's initial fields, as field/value pairs
--
-- Returns {created, failures}: created is 0 if ARGV[6] is '1' and a record
-- that is not failed exists (nothing changed), else 1; failures is the
-- rank's failure counter, read here so that a rank learns of failures in the
-- round trip it already makes (hoist.logger.health). Runs idle longer than the retention leave the
-- run list; an artifact already in the schedule keeps its due time (NX).
if ARGV[6] == '1' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state and state ~= 'failed' then return {0, tonumber(redis.call('GET', KEYS[5]) or '0')} end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[5]))
-- The watchdog of an artifact not yet claimed (see hoist.state.schedule).
redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[1])
if KEYS[6] then raise_marker(KEYS[6], ARGV[7], ARGV[5]) end
return {1, tonumber(redis.call('GET', KEYS[5]) or '0')}
