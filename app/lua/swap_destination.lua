-- Replace one destination's stored document only if it is still the one the caller read,
-- so two admins editing at once cannot silently overwrite each other.
-- KEYS[1] destinations hash, KEYS[2] the destination's invalid-mapping set,
-- KEYS[3] its hold, KEYS[4] the dispatchers' wake list
-- ARGV[1] destination id, ARGV[2] expected document ('' = must be absent),
-- ARGV[3] new document ('' = delete), ARGV[4] how many wake entries to keep
-- Returns 1 when written, 0 when the stored document differed.
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
-- A changed destination gets its mapping IDs tried again (as publish_sync does).
redis.call('DEL', KEYS[2])
if ARGV[3] ~= '' then
  -- An edit (enabling, say) lifts a hold set while it was disabled, and wakes a dispatcher.
  redis.call('DEL', KEYS[3])
  redis.call('RPUSH', KEYS[4], ARGV[1])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
end
return 1
