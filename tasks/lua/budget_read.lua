-- Read a run's budget in one consistent view.
--
-- KEYS[1]  the budget hash ({prefix}budget:{run_id})
--
-- Returns {total_ms, spent_ms, left_ms, exhausted, pttl_ms}, or false (nil in the client) when the
-- run has no meter. left_ms = total_ms - spent_ms and may be negative (the overshoot): the
-- subtraction is done here, in integer milliseconds, so every reader sees the same number.
local key = KEYS[1]
local fields = redis.call('HMGET', key, 'total_ms', 'spent_ms', 'exhausted')
if not fields[1] then
  return false
end

local total_ms = tonumber(fields[1])
local spent_ms = tonumber(fields[2] or '0')
local exhausted = tonumber(fields[3] or '0')
return {total_ms, spent_ms, total_ms - spent_ms, exhausted, redis.call('PTTL', key)}
