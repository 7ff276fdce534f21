-- Releases the recorder lease if this node holds it. KEYS: lease. ARGV: node id.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
