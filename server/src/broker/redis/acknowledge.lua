-- Closes an open chain, and the one its notification escalated (see ACKNOWLEDGE_SCRIPT in mod.rs).
local closed = {}
local function close(chain, member)
  if redis.call('HGET', chain, 'state') == 'open' then
    redis.call('HSET', chain, 'state', 'acknowledged', 'acknowledged_by', ARGV[2])
    redis.call('ZREM', KEYS[1], member)
    closed[#closed + 1] = member
  end
end
close(KEYS[2], ARGV[1])
local origin = redis.call('GET', KEYS[3])
if origin then
  local channel, id = string.match(origin, '^(.*)\n([^\n]*)$')
  if channel then close(ARGV[3] .. channel .. ARGV[4] .. id, origin) end
end
return closed
