-- raise_marker: raise a marker, never lower it.
--
-- KEYS[1]  the marker (string)
-- ARGV[1]  the new value (an order key, or "<order key>|<artifact id>")
-- ARGV[2]  its retention, seconds
--
-- Returns 1 if raised (the marker now holds ARGV[1] and expires after ARGV[2]);
-- 0 if it already held ARGV[1] or a later value (nothing changed).
return raise_marker(KEYS[1], ARGV[1], ARGV[2])
