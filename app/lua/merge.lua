-- Merge field changes into the pending state of many prospects of one destination, atomically.
-- Per field the newer version wins (ties: the later arrival), so a late, older evaluation never
-- overwrites a newer one, whether that one is pending, in flight or already delivered.
-- Nothing is merged for a destination that no longer exists: a producer (or an API process
-- whose cache still knows it) gets an error instead of changes no dispatcher would drain.
-- The check and the deletion (swap_destination.lua) are atomic with respect to each other.
-- KEYS[1] due zset, KEYS[2] leases zset, KEYS[3] first-seen hash, KEYS[4] counters hash,
-- KEYS[5] destinations hash, then per prospect: pending hash, versions hash.
-- ARGV: now_ms, window_ms, destination id, then per prospect: id, n_fields,
-- (field, json_value, ts_ms) * n.
-- Returns {newly_due, fields_applied, fields_stale}, or the error NODEST.
if redis.call('HEXISTS', KEYS[5], ARGV[3]) == 0 then
  return redis.error_reply('NODEST destination ' .. ARGV[3] .. ' does not exist')
end
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local newly, applied, stale = 0, 0, 0
local a = 4
local k = 6
while a <= #ARGV do
  local pid = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  local pend, ver = KEYS[k], KEYS[k + 1]
  a = a + 2
  k = k + 2
  local changed = false
  for _ = 1, n do
    local field, value, ts = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
    a = a + 3
    local mark = redis.call('HGET', ver, field)
    if (not mark) or ts >= tonumber(mark) then
      redis.call('HSET', ver, field, ts)
      redis.call('HSET', pend, field, value)
      applied = applied + 1
      changed = true
    else
      stale = stale + 1
    end
  end
  if changed then
    redis.call('HSETNX', KEYS[3], pid, now)
    -- A prospect in flight is rescheduled by its ack; one already due keeps its earlier time.
    if not redis.call('ZSCORE', KEYS[2], pid) and
       redis.call('ZADD', KEYS[1], 'NX', now + window, pid) == 1 then
      newly = newly + 1
    end
  end
end
if applied > 0 then redis.call('HINCRBY', KEYS[4], 'fields_applied', applied) end
if stale > 0 then redis.call('HINCRBY', KEYS[4], 'fields_stale', stale) end
return {newly, applied, stale}
