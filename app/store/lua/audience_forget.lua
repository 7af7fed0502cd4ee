-- Drop an audience's learned mapping and its issue, and free its mapping ID if the audience
-- still holds it. KEYS[1] audience -> mapping ID, KEYS[2] mapping ID -> audience,
-- KEYS[3] issues; ARGV[1] the audience. Returns the mapping ID it had (nil: none).
local n = redis.call('HGET', KEYS[1], ARGV[1])
if not n then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[2], n) == ARGV[1] then redis.call('HDEL', KEYS[2], n) end
return n
