-- Claim a step of a run before running it.
-- KEYS[1] claim hash, KEYS[2] the host's set of claims
-- ARGV[1] token, ARGV[2] host, ARGV[3] pid, ARGV[4] pid start time, ARGV[5] now (ms),
-- ARGV[6] ttl (ms, the run's deadline: a claim outlives any redelivery of its message)
-- Returns {1} when taken; otherwise {0, state, heartbeat} of the claim found.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local found = redis.call('HMGET', KEYS[1], 'state', 'hb')
  return {0, found[1] or '', found[2] or ''}
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'host', ARGV[2], 'pid', ARGV[3],
  'pid_started', ARGV[4], 'hb', ARGV[5], 'state', 'running')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SADD', KEYS[2], KEYS[1])
return {1}
