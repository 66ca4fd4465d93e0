-- Settle a claim into a final state.
-- KEYS[1] claim hash; ARGV[1] token, ARGV[2] final state, ARGV[3] expected heartbeat or ''.
-- The owner settles with its token. A redelivery takes over a dead owner's claim by passing the
-- heartbeat it watched stand still: if the heartbeat moved since, the owner lives and nothing
-- changes. Returns 1 when settled.
local token = redis.call('HGET', KEYS[1], 'token')
if not token then
  return 0
end
if token ~= ARGV[1] then
  if ARGV[3] == '' or redis.call('HGET', KEYS[1], 'hb') ~= ARGV[3]
      or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'token', ARGV[1])
return 1
