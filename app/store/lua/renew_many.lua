-- Renew the claims of many prospects at once (a bulk call's ids), those still ours only.
-- KEYS[1] leases zset, KEYS[2] lease tokens hash
-- ARGV: token, new lease end (ms), pid...
-- Returns the pids renewed (a claim taken over by another drain is left alone).
local out = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
