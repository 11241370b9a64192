-- Admit a meeting's joining subscribers under its cap, in arrival order.
-- KEYS[1] members zset; ARGV[1] member ttl ms, then (conn id, limit) pairs. One 1/0 per pair.
-- Purge expired members, then admit each conn id if it already is a member or the meeting is
-- under its limit. Abandoned meetings vanish with their last member; the key's life is never
-- shortened below another member's expiry (replicas with a longer member TTL).
local t = redis.call('TIME')  -- the server's clock: replica clocks do not matter
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[1])
local out = {}
local added = false
for i = 2, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i])
      or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    out[#out + 1] = 1
    added = true
  else
    out[#out + 1] = 0
  end
end
if added and redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return out
