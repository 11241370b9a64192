-- Extend a lock's expiry only while this holder still holds it.
-- KEYS[1] lock; ARGV[1] the holder's token; ARGV[2] seconds. 1 extended, 0 lost (expired, taken
-- by another holder, or gone with Redis's data).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
