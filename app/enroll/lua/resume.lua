-- Lift an enrollment pause: what waited for its end (pending or exiting, due at the
-- latest then) is due now. One being sent keeps its lease.
-- KEYS[1] pause hash, KEYS[2] enrollment due, KEYS[3] enrollment states.
-- ARGV: now_ms. Returns how many became due now.
local now = tonumber(ARGV[1])
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until_ms') or 0)
redis.call('DEL', KEYS[1])
if until_ms <= now then return 0 end
local moved = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, until_ms)) do
  local raw = redis.call('HGET', KEYS[3], member)
  if raw and cjson.decode(raw).st ~= 'sending' then
    redis.call('ZADD', KEYS[2], now, member)
    moved = moved + 1
  end
end
return moved
