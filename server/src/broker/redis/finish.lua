-- Finishes a claimed step (see FINISH_SCRIPT in mod.rs).
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'state') == 'open' then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
end
return 1
