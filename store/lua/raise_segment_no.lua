-- Raise an existing counter of a meeting's finals, never lower it.
-- KEYS[1] counter; ARGV[1] number, ARGV[2] ttl ms.
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
