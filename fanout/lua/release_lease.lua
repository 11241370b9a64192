-- Release an ingest lease only if this stream holds it.
-- KEYS[1] lease key; ARGV[1] token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
