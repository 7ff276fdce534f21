-- Renews the recorder lease while this node holds it. KEYS: lease. ARGV: node id, ttl ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
