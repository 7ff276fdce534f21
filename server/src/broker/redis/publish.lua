-- Stores a notification, trims its stream, fans it out (see PUBLISH_SCRIPT in mod.rs).
local function newer(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
if ARGV[8] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[8] then
  return {'', -1}
end
local fingerprint = redis.sha1hex(ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. ARGV[1])
if ARGV[9] == '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local id, stored = string.match(existing, '^(%S+) (%x+)$')
    if id == nil then return {existing, -2} end
    if stored ~= fingerprint then return {id, -3} end
    return {id, -2}
  end
end
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'p', ARGV[2], 'x', ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local through = nil
local expired = redis.call('XRANGE', KEYS[1], '-', '(' .. tostring(now_ms - tonumber(ARGV[5])) .. '-0', 'COUNT', 1000)
if #expired > 0 then through = expired[#expired][1] end
local max_len = tonumber(ARGV[4])
local len = redis.call('XLEN', KEYS[1])
if len > max_len + math.floor(max_len / 10) then
  local surplus = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - max_len)
  local last = surplus[#surplus][1]
  if through == nil or newer(last, through) then through = last end
end
if through then
  local ms, seq = string.match(through, '(%d+)-(%d+)')
  redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. tostring(tonumber(seq) + 1))
  redis.call('SET', KEYS[4], through)
end
if ARGV[9] == '1' then redis.call('SET', KEYS[2], id .. ' ' .. fingerprint, 'EX', ARGV[7]) end
if ARGV[10] ~= '' then
  -- The escalation chain: its state, and its first steps due after the id's time.
  local id_ms = tonumber(string.match(id, '^(%d+)'))
  local chain = ARGV[11] .. id
  local expires = ''
  if ARGV[3] ~= '' then expires = tostring(id_ms + tonumber(ARGV[3])) end
  redis.call('HSET', chain, 'policy', ARGV[10], 'priority', ARGV[2], 'state', 'open', 'expires', expires)
  redis.call('EXPIRE', chain, ARGV[7])
  for i = 13, #ARGV, 2 do
    redis.call('ZADD', KEYS[5], id_ms + tonumber(ARGV[i + 1]), ARGV[i] .. '\n' .. ARGV[12] .. '\n' .. id)
  end
  redis.call('ZADD', KEYS[6], id_ms, ARGV[12] .. '\n' .. id)
end
local n = redis.call('PUBLISH', ARGV[6], id .. '\n' .. ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. ARGV[1])
return {id, n}
