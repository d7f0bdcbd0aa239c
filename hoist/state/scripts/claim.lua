-- claim: claim an artifact for one task.
--
-- A worker acts only on the very message its record holds: another message
-- under a known id (even a signed one) touches nothing. A record that does
-- not exist yet is created from the initial fields.
--
-- KEYS[1]  the artifact's record (hash)
-- KEYS[2]  the artifact's owner (string: the claiming task's token)
-- KEYS[3]  the deferred schedule (sorted set, scores in ms since the epoch)
-- KEYS[4]  optional: a marker the claimed work reads first (its name's newest version)
-- ARGV[1]  the task's token
-- ARGV[2]  the lease, ms: how long the claim lives without a heartbeat
-- ARGV[3]  max deliveries: deliveries without an outcome before the artifact is poison
-- ARGV[4]  now, seconds since the epoch (started_at, finished_at)
-- ARGV[5]  the watchdog's due time, ms since the epoch
-- ARGV[6]  the artifact id (its member in the deferred schedule)
-- ARGV[7..] the record's initial fields, as field/value pairs; they include
--          'message' and 'task', which a held record must match
-- TERMINAL (set by the loader) the finished states
--
-- Returns 'mismatch' (the record holds another message or task; nothing
-- changed), 'finished' (terminal state; nothing changed), 'busy' (another
-- owner is alive; nothing changed), 'poison' (deliveries would exceed
-- ARGV[3]: the record is failed and leaves the schedule) or 'claimed' (the
-- owner is set for the lease, the record is 'uploading' and the watchdog due).
-- With KEYS[4], a claim returns {'claimed', the marker's value or false}: the
-- work's first read, in the claim's round trip.
local initial = {}
for i = 7, #ARGV, 2 do initial[ARGV[i]] = ARGV[i + 1] end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], unpack(ARGV, 7))
  state = initial['state']
else
  local held = redis.call('HMGET', KEYS[1], 'message', 'task')
  if held[1] ~= initial['message'] or held[2] ~= initial['task'] then return 'mismatch' end
end
if TERMINAL[state] then return 'finished' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'busy' end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[4], 'error',
    'the worker was lost ' .. (deliveries - 1) .. ' times while handling this artifact ' ..
    '(killed, out of memory?); see the workers\' logs, then `hoist retry`')
  redis.call('ZREM', KEYS[3], ARGV[6])
  return 'poison'
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'uploading', 'started_at', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
if KEYS[4] then return {'claimed', redis.call('GET', KEYS[4])} end
return 'claimed'
