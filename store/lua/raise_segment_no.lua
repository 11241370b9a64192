-- Raise an existing counter of a meeting's finals, never lower it.
-- KEYS[1] counter, KEYS[2] the meeting's "numbered here" mark; ARGV[1] number, ARGV[2] ttl ms,
-- ARGV[3] the mark's ttl ms (finals of it are stored: it is no new meeting).
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
