-- The next number of a meeting's finals, for one claim (stream id + stream seq).
-- KEYS[1] counter, KEYS[2] claims, KEYS[3] the meeting's "numbered here" mark; ARGV[1] stream
-- id, ARGV[2] stream seq, ARGV[3] floor, ARGV[4] seed ('' = not read yet), ARGV[5] ttl ms,
-- ARGV[6] the mark's ttl ms. Returns the number, or -1: seed needed.
-- A claim asked again (a retried call whose first INCR landed) gets its number again.
local claim = redis.call('HGET', KEYS[2], ARGV[1])
if claim then
  local sep = string.find(claim, ':', 1, true)
  if string.sub(claim, 1, sep - 1) == ARGV[2] then
    return tonumber(string.sub(claim, sep + 1))
  end
end
local current = redis.call('GET', KEYS[1])
if not current then
  if ARGV[4] == '' then
    return -1
  end
  current = ARGV[4]
  redis.call('SET', KEYS[1], current)
end
if tonumber(current) < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[3])
end
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. n)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[6])
return n
