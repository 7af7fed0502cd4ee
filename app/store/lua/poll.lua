-- The dispatcher's look at one destination: how much is ready and how many drain slots to
-- start so that ceil(ready / batch) drainers run, at most max_drainers across all hosts.
-- While the destination is on hold (its quota gate granted nothing), nothing starts and
-- the dispatcher is told to come back when the hold ends.
-- KEYS[1] due, KEYS[2] leases, KEYS[3] drainers zset, KEYS[4] hold (ms), KEYS[5] the
-- drainers' id counter, KEYS[6] enrollments due (app/enroll), KEYS[7] enrollment pause,
-- KEYS[8] emails due for resolution, KEYS[9] their leases (a drain resolves due emails
-- before it claims prospects).
-- ARGV: now_ms, batch, max_drainers, slot_ttl_ms.
-- Returns {ready, next due time after now in ms or -1, new slot ids...}.
local now, batch, maxd, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local hold = tonumber(redis.call('GET', KEYS[4]) or 0)
if hold > now then return {0, hold} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local ready, nxt = 0, -1
-- Enrollments due (unless paused) start a drain too: its enrollment stage sends them.
local enroll_paused = tonumber(redis.call('HGET', KEYS[7], 'until_ms') or 0) > now
for _, i in ipairs({1, 2, 6, 8, 9}) do
  if i ~= 6 or not enroll_paused then
    ready = ready + redis.call('ZCOUNT', KEYS[i], '-inf', now)
    -- The next moment after now when something falls due (what is due now, drains take).
    local d = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #d > 0 and (nxt < 0 or tonumber(d[2]) < nxt) then nxt = tonumber(d[2]) end
  end
end
local out = {ready, nxt}
if ready > 0 then
  local want = math.min(math.ceil(ready / batch), maxd) - redis.call('ZCARD', KEYS[3])
  for _ = 1, want do
    local id = redis.call('INCR', KEYS[5])
    redis.call('ZADD', KEYS[3], now + ttl, id)
    out[#out + 1] = id
  end
end
return out
