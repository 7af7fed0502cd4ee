-- Send the delivered state of many prospects of one destination again (Outreach was edited by
-- hand), atomically per batch. Per field the delivered value becomes pending unless a change
-- is already pending or in flight: those are newer, and a value put back under a flight would
-- be sent after it (or shadow its snapshot on retry). The delivered hash goes, so no-op
-- skipping does not swallow what is put back.
-- KEYS[1] due zset, KEYS[2] leases zset, KEYS[3] first-seen hash, KEYS[4] counters hash,
-- then per prospect: delivered hash, pending hash, in-flight hash.
-- ARGV: now_ms, window_ms, then one prospect id per prospect.
-- Returns {prospects to be sent again, fields put back}.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local prospects, restored = 0, 0
for i = 3, #ARGV do
  local pid = ARGV[i]
  local k = 5 + (i - 3) * 3
  local dlv, pend, fly = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local values = redis.call('HGETALL', dlv)
  if #values > 0 then
    for j = 1, #values, 2 do
      if redis.call('HEXISTS', fly, values[j]) == 0 and
         redis.call('HSETNX', pend, values[j], values[j + 1]) == 1 then
        restored = restored + 1
      end
    end
    redis.call('DEL', dlv)
    if redis.call('EXISTS', pend) == 1 then
      prospects = prospects + 1
      redis.call('HSETNX', KEYS[3], pid, now)
      -- A prospect in flight is rescheduled by its ack; one already due keeps its time.
      if not redis.call('ZSCORE', KEYS[2], pid) then
        redis.call('ZADD', KEYS[1], 'NX', now + window, pid)
      end
    end
  end
end
if prospects > 0 then redis.call('HINCRBY', KEYS[4], 'resync_prospects', prospects) end
if restored > 0 then redis.call('HINCRBY', KEYS[4], 'resync_fields', restored) end
return {prospects, restored}
