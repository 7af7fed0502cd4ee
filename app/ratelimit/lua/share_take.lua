-- Takes up to `want` permits from one part's share of a user's quota (a destination's cap):
-- a sliding log in a sorted set, so that permits the user's own budget then refused can be
-- given back exactly (`limits` has no refund). One step, so racing workers cannot overshoot.
-- KEYS[1] the part's log (zset member -> ms). ARGV[1]: one JSON document (ShareArgs in
-- app/ratelimit/scripts.py): now_ms, window_ms, cap, want, token.
-- Returns {permits taken, ms when room frees (when none was taken) or 0}.
local a = cjson.decode(ARGV[1])
local now, window, cap, want = a.now_ms, a.window_ms, a.cap, a.want
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = math.min(want, cap - redis.call('ZCARD', KEYS[1]))
if n <= 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window}
end
for i = 1, n do redis.call('ZADD', KEYS[1], now, a.token .. ':' .. i) end
redis.call('PEXPIRE', KEYS[1], window)
return {n, 0}
