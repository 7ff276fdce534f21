-- Lists open chains, oldest first, dropping members whose chain is no longer open (see OPEN_SCRIPT in mod.rs).
local open = {}
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, member in ipairs(members) do
  local channel, id = string.match(member, '^(.*)\n([^\n]*)$')
  local state = false
  if channel then state = redis.call('HGET', ARGV[2] .. channel .. ARGV[3] .. id, 'state') end
  if state == 'open' then
    open[#open + 1] = member
    if #open >= tonumber(ARGV[1]) then break end
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return open
