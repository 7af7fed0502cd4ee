-- Replace one destination's stored document only if it is still the one the caller read,
-- so two admins editing at once cannot silently overwrite each other.
-- KEYS[1] destinations hash, KEYS[2] the destination's invalid-mapping set, KEYS[3] its hold,
-- KEYS[4] its due zset, KEYS[5] its leases zset, KEYS[6] its failures hash
-- ARGV[1] destination id, ARGV[2] expected document ('' = must be absent),
-- ARGV[3] new document ('' = delete),
-- ARGV[4] '1': a deletion only while nothing is pending, in flight or failed
-- Returns 1 when written, 0 when the stored document differed, -1 when a deletion was
-- refused because changes arrived since the caller counted them (merge.lua refuses changes
-- once the document is gone, so none can slip in between this check and the deletion).
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' and ARGV[4] == '1' and
   redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[5]) + redis.call('HLEN', KEYS[6]) > 0 then
  return -1
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
-- A changed destination gets its mapping IDs tried again (as publish_sync does).
redis.call('DEL', KEYS[2])
if ARGV[3] ~= '' then
  -- An edit (enabling, say) lifts a hold set while it was disabled (the caller then wakes
  -- the dispatchers).
  redis.call('DEL', KEYS[3])
end
return 1
