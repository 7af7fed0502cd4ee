-- Merge field changes into the pending state of many prospects of one destination, atomically.
-- Per field the newer version wins (ties: the later arrival), so a late, older evaluation never
-- overwrites a newer one, whether that one is pending, in flight or already delivered.
-- Nothing is merged for a destination being deleted: a producer (or an API process whose
-- cache still knows it) gets an error instead of changes no dispatcher would drain. The check
-- and the deletion's (retire_destination.lua) are atomic with respect to each other; whether
-- the destination was ever published, the caller asks the catalog first (another slot).
-- KEYS[1] due zset, KEYS[2] leases zset, KEYS[3] first-seen hash, KEYS[4] counters hash,
-- KEYS[5] retired marker, then per prospect of the document, in its order, its pending and
-- versions hashes (KEYS[4 + 2i], KEYS[5 + 2i]): every key declared, as Redis Cluster wants.
-- ARGV: now_ms, window_ms, destination id, then the changes as one JSON document:
-- [[prospect id, [[field, json value, ts ms], ...]], ...], ids and times as strings (exact
-- beyond 2^53). One document rather than one argument per item: packing hundreds of
-- thousands of arguments was most of a producer's merge time.
-- Returns {newly_due, fields_applied, fields_stale}, or the error NODEST.
if redis.call('EXISTS', KEYS[5]) == 1 then
  return redis.error_reply('NODEST destination ' .. ARGV[3] .. ' does not exist')
end
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local newly, applied, stale = 0, 0, 0
for i, prospect in ipairs(cjson.decode(ARGV[4])) do
  local pid, fields = prospect[1], prospect[2]
  local pend, ver = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local changed = false
  for _, change in ipairs(fields) do
    local field, value, ts = change[1], change[2], tonumber(change[3])
    local mark = redis.call('HGET', ver, field)
    if (not mark) or ts >= tonumber(mark) then
      redis.call('HSET', ver, field, change[3])
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
