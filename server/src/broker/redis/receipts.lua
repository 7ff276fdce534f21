-- Records receipts for the ids the stream holds (see RECEIPTS_SCRIPT in mod.rs).
local recorded = {}
for i = 2, #KEYS do
  local id = ARGV[i + 2]
  if #redis.call('XRANGE', KEYS[1], id, id, 'COUNT', 1) > 0 then
    redis.call('HSETNX', KEYS[i], ARGV[1], ARGV[2])
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    recorded[#recorded + 1] = id
  end
end
return recorded
