-- The next numbers of a meeting's finals, for one claim (stream id + stream seq).
-- KEYS[1] counter, KEYS[2] claims, KEYS[3] the meeting's "numbered here" mark; ARGV[1] stream
-- id, ARGV[2] stream seq, ARGV[3] floor, ARGV[4] seed ('' = not read yet), ARGV[5] ttl ms,
-- ARGV[6] the mark's ttl ms, ARGV[7] how many consecutive numbers (a recording's chunk takes
-- one per final; absent: 1). Returns the first number, or -1: seed needed.
-- A claim asked again (a retried call whose first INCRBY landed) gets its numbers again.
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
local count = tonumber(ARGV[7] or '1')
local first = redis.call('INCRBY', KEYS[1], count) - count + 1
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. first)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[6])
return first
