-- Renew an ingest lease if this stream still holds it.
-- KEYS[1] lease key; ARGV[1] token, ARGV[2] ttl ms. Returns 1 renewed (or taken again), 0 lost.
-- A missing key (Redis restarted without persistence, failover, flush) is taken again: nobody
-- else holds it, and the stream is alive. Only another holder's token means the lease was lost.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
  return 1
end
return 0
