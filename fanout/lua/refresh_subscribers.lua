-- Push this replica's subscribers' expiry forward.
-- KEYS[1] members zset; ARGV[1] member ttl ms, ARGV[2..] conn ids. Returns how many moved.
-- Only updates members still present (XX): one purged meanwhile may have had its place taken,
-- and re-adding it could break the cap. Unless the whole set is gone (Redis lost its data, or
-- every member expired during an outage): nobody took a place then, and these viewers are
-- still connected, so they are counted again rather than until they reconnect.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local only_present = redis.call('EXISTS', KEYS[1]) == 1
local n = 0
for i = 2, #ARGV do
  if only_present then
    n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
  else
    n = n + redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  end
end
if n > 0 and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
