-- Charge hook time to a run's budget and say what is left.
--
-- KEYS[1]  the budget hash ({prefix}budget:{run_id})
-- ARGV[1]  time to charge, integer milliseconds (>= 0)
--
-- Returns the milliseconds left after the charge (negative when the budget is overspent: that is
-- the overshoot), or false (nil in the client) when the run has no meter (never opened, or past
-- its deadline and expired).
--
-- The EXISTS check is inside the script on purpose: HINCRBY on a missing key would create a new
-- hash without a TTL, i.e. a key that never expires and a budget with no total. The TTL set by
-- open is never touched here, so a meter lives no longer than its run's deadline however long its
-- hooks keep charging.
local key = KEYS[1]
local charge_ms = tonumber(ARGV[1])

if redis.call('EXISTS', key) == 0 then
  return false
end

local spent_ms = redis.call('HINCRBY', key, 'spent_ms', charge_ms)
local total_ms = tonumber(redis.call('HGET', key, 'total_ms'))
local left_ms = total_ms - spent_ms

if left_ms <= 0 and redis.call('HGET', key, 'exhausted') ~= '1' then
  redis.call('HSET', key, 'exhausted', 1)
end
return left_ms
