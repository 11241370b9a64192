-- Delete a key only if it still holds this holder's token (a lease or lock released by its
-- holder, never one another holder took after it expired).
-- KEYS[1] key; ARGV[1] token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
