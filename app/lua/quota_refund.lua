-- Gives back permits reserved by quota_reserve.lua that our own window then refused: they
-- will never be in flight.
-- KEYS[1] server budget (hash). ARGV: permits to give back, 'probe' when one was a probe.
local left = redis.call('HINCRBY', KEYS[1], 'inflight', -tonumber(ARGV[1]))
if tonumber(left) < 0 then redis.call('HSET', KEYS[1], 'inflight', 0) end
if ARGV[2] == 'probe' then redis.call('HDEL', KEYS[1], 'probe') end
return 1
