-- Set the numbering epoch only while the builder still holds the marking lock: a Redis that
-- lost its data during the build lost the lock with the marks written so far, and an epoch
-- set then would vouch for marks that are gone.
-- KEYS[1] marking lock; KEYS[2] epoch. ARGV[1] the builder's token; ARGV[2] the new epoch.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'NX')
return 1
