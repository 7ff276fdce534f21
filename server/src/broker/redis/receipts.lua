-- Records receipts for the ids the stream holds (see RECEIPTS_SCRIPT in mod.rs).
local recorded = {}
for i = 2, #KEYS do
  local id = ARGV[i + 5]
  if #redis.call('XRANGE', KEYS[1], id, id, 'COUNT', 1) > 0 then
    redis.call('HSETNX', KEYS[i], ARGV[1], ARGV[2])
    if redis.call('HSETNX', KEYS[i], ARGV[4], ARGV[2]) == 1 then
      local trail = ARGV[6] .. id
      redis.call('RPUSH', trail, ARGV[5])
      redis.call('EXPIRE', trail, ARGV[3])
    end
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    recorded[#recorded + 1] = id
  end
end
return recorded
