-- The history's epoch: named when Redis first holds Wardline's data (from Redis's own clock, to the
-- microsecond), so a Redis that lost its data set (restarted without persistence) gets a new one.
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. '-' .. t[2]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
