-- Release a job lock only when the given run holds it: a late finalize of an old run must not
-- free the lock of the run that came after it.
-- KEYS[1] lock key; ARGV[1] run id. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
