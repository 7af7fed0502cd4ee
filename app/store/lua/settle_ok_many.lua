-- Settle many claimed prospects as delivered, every field of their snapshot (a bulk batch's
-- records): settle.lua's "ok" for each, in one round trip. A claim no longer ours is left
-- alone and counted, as settle.lua does.
-- KEYS[1] due, KEYS[2] leases, KEYS[3] lease tokens, KEYS[4] first-seen, KEYS[5] counters,
-- KEYS[6] attempts, KEYS[7] failing-since, then per prospect of ARGV, in its order, its
-- in-flight, pending and delivered hashes (KEYS[5 + 3i] .. KEYS[7 + 3i]).
-- ARGV: token, now_ms, window_ms, pid...
-- Returns the pids settled.
local token, now, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local pid = ARGV[i]
  local k = 7 + 3 * (i - 4)
  if redis.call('HGET', KEYS[3], pid) ~= token then
    redis.call('HINCRBY', KEYS[5], 'late_settles', 1)
  else
    redis.call('ZREM', KEYS[2], pid)
    redis.call('HDEL', KEYS[3], pid)
    local fly, pend, dlv = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
    local snap = redis.call('HGETALL', fly)
    if #snap > 0 then redis.call('HSET', dlv, unpack(snap)) end
    redis.call('DEL', fly)
    redis.call('HDEL', KEYS[6], pid)
    redis.call('HDEL', KEYS[7], pid)
    redis.call('HDEL', KEYS[4], pid)
    if redis.call('EXISTS', pend) == 1 then
      -- Changes that arrived during the flight: their window starts now at the latest.
      redis.call('HSET', KEYS[4], pid, now)
      redis.call('ZADD', KEYS[1], now + window, pid)
    end
    out[#out + 1] = pid
  end
end
return out
