-- Renews a claimed step's lease while the claim is still this node's (see RENEW_SCRIPT in mod.rs):
-- the score the claim set is its fence.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
