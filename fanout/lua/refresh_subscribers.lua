-- Push this replica's subscribers' expiry forward.
-- KEYS[1] members zset; ARGV[1] member ttl ms, ARGV[2..] conn ids. Returns how many moved.
-- Only updates members still present (XX): one purged meanwhile may have had its place taken,
-- and re-adding it could break the cap.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
if n > 0 and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
