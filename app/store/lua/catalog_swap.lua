-- Replace one destination's document in the catalog only if it is still the one the caller
-- read, so two admins editing at once cannot silently overwrite each other.
-- KEYS[1] destinations hash. ARGV[1] destination id, ARGV[2] expected document ('' = must be
-- absent), ARGV[3] new document ('' = delete).
-- Returns 1 when written, 0 when the stored document differed.
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
