-- Open the hook budget of one run, once.
--
-- KEYS[1]  the budget hash ({prefix}budget:{run_id})
-- ARGV[1]  total budget, integer milliseconds (>= 0)
-- ARGV[2]  time to live, integer milliseconds (> 0): the run's deadline
--
-- Returns 1 when the meter was created, 0 when it already existed. A second open (a redelivered
-- start_run, a retry) must not reset what the run's hooks have already spent, nor move the
-- deadline, so an existing key is left exactly as it is.
local key = KEYS[1]
local total_ms = tonumber(ARGV[1])
local ttl_ms = tonumber(ARGV[2])

if redis.call('EXISTS', key) == 1 then
  return 0
end

-- "exhausted" is set the first time spent >= total; a zero budget is exhausted from the start.
local exhausted = 0
if total_ms <= 0 then
  exhausted = 1
end

redis.call('HSET', key,
  'total_ms', total_ms,
  'spent_ms', 0,
  'exhausted', exhausted)
redis.call('PEXPIRE', key, ttl_ms)
return 1
