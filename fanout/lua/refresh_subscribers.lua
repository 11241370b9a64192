-- Push this replica's subscribers' expiry forward.
-- KEYS[1] members zset; ARGV[1] member ttl ms, ARGV[2..] conn ids. Returns how many moved.
-- A member missing from the set is added back: these viewers are still connected, and it went
-- while this replica could not refresh it (an outage longer than the member TTL) or with the
-- set (Redis lost its data; every replica adds its own back). The cap governs admission, not
-- eviction: after such a gap the count may stand above it, and new joins wait until it drops.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
if n > 0 and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
