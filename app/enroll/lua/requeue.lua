-- A refused or failed enrollment replayed (``failures replay``): pending again, due now.
-- One in any other state (enrolled since, left, waiting) is left alone.
-- KEYS[1] enrollment states, KEYS[2] enrollment due.
-- ARGV: member (prospect:sequence), audience, now_ms. Returns 1 when requeued.
local member, aud, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('HGET', KEYS[1], member)
if raw then
  local st = cjson.decode(raw).st
  if st ~= 'refused' and st ~= 'failed' then return 0 end
end
redis.call('HSET', KEYS[1], member, cjson.encode({st = 'pending', op = 'enroll', aud = aud, n = 0, at = now}))
redis.call('ZADD', KEYS[2], now, member)
return 1
