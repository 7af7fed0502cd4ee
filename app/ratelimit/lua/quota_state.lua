-- A user's quota as the status views show it, read in one step (writes nothing).
-- KEYS[1] pause (string), KEYS[2] server budget (hash), KEYS[3] grant expiries (zset),
-- KEYS[4] grants' permits still out (hash): see quota_grants.lua.
-- Returns {pause or false, remaining or false, reset or false, permits in flight,
-- the reported limit or false}.
local s = redis.call('HMGET', KEYS[2], 'remaining', 'reset', 'limit')
local inflight = grants_out(KEYS[3], KEYS[4], grants_now())
return {redis.call('GET', KEYS[1]), s[1], s[2], inflight, s[3]}
