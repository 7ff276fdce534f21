-- Records receipts for the ids the stream holds (see RECEIPTS_SCRIPT in mod.rs).
local recorded = {}
for i = 2, #KEYS do
  local id = ARGV[i + 10]
  if #redis.call('XRANGE', KEYS[1], id, id, 'COUNT', 1) > 0 then
    redis.call('HSETNX', KEYS[i], ARGV[1], ARGV[2])
    -- A device the user's receipts have not named yet counts towards the user's limit; past it,
    -- the receipt goes into the trail without a device.
    local device_field, event = ARGV[4], ARGV[5]
    if ARGV[7] ~= '' and redis.call('HEXISTS', KEYS[i], ARGV[7]) == 0 then
      if tonumber(redis.call('HGET', KEYS[i], ARGV[8]) or '0') < tonumber(ARGV[9]) then
        redis.call('HSET', KEYS[i], ARGV[7], '1')
        redis.call('HINCRBY', KEYS[i], ARGV[8], 1)
      else
        device_field, event = ARGV[10], ARGV[11]
      end
    end
    if redis.call('HSETNX', KEYS[i], device_field, ARGV[2]) == 1 then
      local trail = ARGV[6] .. id
      redis.call('RPUSH', trail, event)
      redis.call('EXPIRE', trail, ARGV[3])
    end
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    recorded[#recorded + 1] = id
  end
end
return recorded
