-- Gives back permits reserved by quota_reserve.lua that the window then refused. A newer
-- observation has already reset the count, so then there is nothing to give back.
-- KEYS[1] server budget (hash). ARGV: gen seen when reserving, permits to give back.
-- Returns 1 when given back, else 0.
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'granted', -tonumber(ARGV[2]))
return 1
