-- drop_mark: remove a retention mark only if it is still the one a finish read.
--
-- A finish that read a mark, then took long (a busy store), must not drop a
-- newer mark of the same object written meanwhile: that one names another version.
--
-- KEYS[1]  the run's marks (pruning:<run>, a hash: object name -> mark)
-- ARGV[1]  the marked object (its field)
-- ARGV[2]  the mark as the finish read it
--
-- Returns 1 if the mark was removed, 0 if it had changed or was gone (nothing changed).
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
