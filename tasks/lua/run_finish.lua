-- Finish a run once: the first writer of a final state wins (finalize or the watchdog).
-- KEYS[1] run hash, KEYS[2] active zset
-- ARGV[1] run id, ARGV[2] status, ARGV[3] reason, ARGV[4] finished_at (epoch seconds),
-- ARGV[5..] extra field/value pairs to set with the final state
-- Returns 1 when this call finished the run, 0 when it was already final (or unknown).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 0
end
if status ~= 'queued' and status ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'reason', ARGV[3], 'finished_at', ARGV[4])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
