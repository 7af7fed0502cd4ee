-- Settle a claimed prospect: delivered, returned to pending, or failed.
-- A claim whose lease expired and was taken over is recognised by its token: the late
-- outcome then changes nothing (the other worker's claim decides) and is counted.
-- KEYS[1] due, KEYS[2] leases, KEYS[3] lease tokens, KEYS[4] first-seen, KEYS[5] counters,
-- KEYS[6] attempts, KEYS[7] failing-since, KEYS[8] in-flight hash, KEYS[9] pending hash,
-- KEYS[10] delivered hash, KEYS[11] this hour's metrics hash (app/store/counters.py).
-- ARGV: pid, token, now_ms, window_ms, outcome ("ok" | "retry" | "defer" | "drop"),
--       ("defer" returns the change like "retry" without counting a failed attempt),
--       due_ms (for retry), TTL of the hourly metrics hash in seconds, then fields: for ok
--       those delivered, for retry/defer those dropped (failed on their own) instead of
--       returned to pending.
-- Returns 1 when settled, 0 when the claim was no longer ours.
local pid, token, now, window, outcome, due_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
if redis.call('HGET', KEYS[3], pid) ~= token then
  redis.call('HINCRBY', KEYS[5], 'late_settles', 1)
  return 0
end
redis.call('ZREM', KEYS[2], pid)
redis.call('HDEL', KEYS[3], pid)
if outcome == 'ok' then
  for i = 8, #ARGV do
    local v = redis.call('HGET', KEYS[8], ARGV[i])
    if v then redis.call('HSET', KEYS[10], ARGV[i], v) end
    redis.call('HDEL', KEYS[8], ARGV[i])
  end
  -- Fields not delivered (a partial success) go back to pending; newer pending values win.
  local rest = redis.call('HGETALL', KEYS[8])
  for i = 1, #rest, 2 do redis.call('HSETNX', KEYS[9], rest[i], rest[i + 1]) end
  redis.call('HDEL', KEYS[6], pid)
  redis.call('HDEL', KEYS[7], pid)
end
if outcome == 'retry' or outcome == 'defer' then
  for i = 8, #ARGV do redis.call('HDEL', KEYS[8], ARGV[i]) end
  -- Newer pending values win over the snapshot that could not be sent.
  local snap = redis.call('HGETALL', KEYS[8])
  for i = 1, #snap, 2 do redis.call('HSETNX', KEYS[9], snap[i], snap[i + 1]) end
  if outcome == 'retry' then
    -- A retry follows an answer that does not say whether Outreach applied the PATCH (a
    -- timeout, a dropped connection, a 5xx): what it holds for these fields is unknown, so
    -- no later value of them may be skipped as a no-op (a "defer" was never sent).
    for i = 1, #snap, 2 do redis.call('HDEL', KEYS[10], snap[i]) end
    -- The retry age runs from the first failed attempt, not from the change's arrival.
    redis.call('HSETNX', KEYS[7], pid, now)
    redis.call('HINCRBY', KEYS[6], pid, 1)
    redis.call('HINCRBY', KEYS[5], 'retried', 1)
    redis.call('HINCRBY', KEYS[11], 'retried', 1)
    redis.call('EXPIRE', KEYS[11], tonumber(ARGV[7]))
  end
end
redis.call('DEL', KEYS[8])
if outcome == 'ok' or outcome == 'drop' then redis.call('HDEL', KEYS[4], pid) end
-- A dead letter's count goes with it: a later change starts with a fresh retry budget, and
-- the hash does not keep one entry per prospect ever failed.
if outcome == 'drop' then
  redis.call('HDEL', KEYS[6], pid)
  redis.call('HDEL', KEYS[7], pid)
end
if redis.call('EXISTS', KEYS[9]) == 1 then
  -- Changes that arrived during the flight: their window starts now at the latest.
  redis.call('HSETNX', KEYS[4], pid, now)
  local first = tonumber(redis.call('HGET', KEYS[4], pid))
  local when = math.max(now, first + window)
  if outcome == 'retry' or outcome == 'defer' then when = math.max(due_ms, now) end
  redis.call('ZADD', KEYS[1], when, pid)
end
return 1
