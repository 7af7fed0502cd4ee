-- Mark a destination being deleted as retired, so merge.lua refuses its changes from now on,
-- unless (ARGV[1] '1') anything is pending, in flight or failed: changes that arrived after
-- the caller counted them. The check and the mark are one step in the destination's slot,
-- so no change can slip in between; the catalog entry goes next (catalog_swap.lua).
-- KEYS[1] retired marker, KEYS[2] due zset, KEYS[3] leases zset, KEYS[4] failures hash, then
-- optionally KEYS[5] emails due for resolution and KEYS[6] their leases (waiting changes too).
-- Returns 1 when retired, -1 when refused.
if ARGV[1] == '1' then
  local held = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) + redis.call('HLEN', KEYS[4])
  for i = 5, #KEYS do held = held + redis.call('ZCARD', KEYS[i]) end
  if held > 0 then return -1 end
end
redis.call('SET', KEYS[1], '1')
return 1
