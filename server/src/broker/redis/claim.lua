-- Claims the steps due now of open chains (see CLAIM_SCRIPT in mod.rs).
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, member in ipairs(due) do
  local step, channel, id = string.match(member, '^([^\n]*)\n(.*)\n([^\n]*)$')
  local state, policy, expires = false, false, false
  local chain = nil
  if step then
    chain = ARGV[4] .. channel .. ARGV[5] .. id
    local fields = redis.call('HMGET', chain, 'state', 'policy', 'expires')
    state, policy, expires = fields[1], fields[2], fields[3]
  end
  if state == 'open' and expires and expires ~= '' and tonumber(expires) <= now then
    redis.call('HSET', chain, 'state', 'expired')
    redis.call('ZREM', KEYS[2], channel .. '\n' .. id)
    state = 'expired'
  end
  if state == 'open' then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), member)
    claimed[#claimed + 1] = {step, channel, id, policy}
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return claimed
