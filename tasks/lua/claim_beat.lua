-- Heartbeat of a running claim; only its owner (same token) may beat it.
-- KEYS[1] claim hash; ARGV[1] token, ARGV[2] now (ms). Returns 1 while the claim is ours.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'state') == 'running' then
  redis.call('HSET', KEYS[1], 'hb', ARGV[2])
  return 1
end
return 0
