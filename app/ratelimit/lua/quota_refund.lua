-- Gives back permits of a grant (quota_reserve.lua) that will never be in flight: our own
-- window refused them, or the holder did not use them all.
-- KEYS[1] server budget (hash), KEYS[2] grant expiries (zset), KEYS[3] grants' permits still
-- out (hash): see quota_grants.lua.
-- ARGV: the grant's id, permits to give back, 'probe' when one was a probe, hold ms (the rest
-- of the grant, if any, lives this much longer).
grants_settle(KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), grants_now(), tonumber(ARGV[4]))
if ARGV[3] == 'probe' then redis.call('HDEL', KEYS[1], 'probe') end
return 1
