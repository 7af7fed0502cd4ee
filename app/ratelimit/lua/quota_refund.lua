-- Gives back permits of a grant (quota_reserve.lua) that will never be in flight: our own
-- window refused them, or the holder did not use them all.
-- KEYS[1] server budget (hash), KEYS[2] grant expiries (zset), KEYS[3] grants' permits still
-- out (hash): see quota_grants.lua.
-- ARGV[1]: one JSON document (RefundArgs in app/ratelimit/scripts.py): grant (its id),
-- permits (to give back), probe (one was a probe), hold_ms (the rest of the grant, if any,
-- lives this much longer).
local a = cjson.decode(ARGV[1])
grants_settle(KEYS[2], KEYS[3], a.grant, a.permits, grants_now(), a.hold_ms)
if a.probe then redis.call('HDEL', KEYS[1], 'probe') end
return 1
