-- Write one connection record unless another writer changed it since it was read
-- (compare-and-set on the record's revision), so a token refresh, an OAuth callback and a
-- configuration load never overwrite one another's tokens.
-- KEYS[1] connections hash. ARGV: id, expected revision (-1: must not exist yet), new JSON.
-- Returns 1 when written, 0 on a conflict (the caller reads again and retries).
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local expected = tonumber(ARGV[2])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  local rev = 0
  if ok and type(doc) == 'table' and tonumber(doc['revision']) then rev = tonumber(doc['revision']) end
  if rev ~= expected then return 0 end
elseif expected ~= -1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
