-- Claim up to `batch` due prospects of one destination under a lease.
-- Expired leases (a crashed worker) are first put back to pending. Fields whose pending value
-- equals the value Outreach last confirmed are dropped: a prospect left with nothing costs no
-- request.
-- KEYS[1] due, KEYS[2] leases, KEYS[3] lease tokens, KEYS[4] first-seen, KEYS[5] counters,
-- KEYS[6] attempts hash, KEYS[7] failing-since hash, KEYS[8] this hour's metrics hash
-- (app/metrics.py).
-- ARGV: now_ms, lease_ms, batch, token, key prefix of per-prospect keys ("<p>:{dest}:"),
--       TTL of the hourly metrics hash in seconds.
-- Returns a flat list: per prospect id, first_seen_ms, attempts, failing_since_ms (0: none),
-- n_fields, (field, value) * n.
local now, lease, batch, token, kp = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
for _, pid in ipairs(expired) do
  local fly, pend, dlv = kp .. 'fly:' .. pid, kp .. 'pend:' .. pid, kp .. 'dlv:' .. pid
  local snap = redis.call('HGETALL', fly)
  for i = 1, #snap, 2 do
    redis.call('HSETNX', pend, snap[i], snap[i + 1])
    -- The worker may have sent the snapshot before it died: what Outreach holds for these
    -- fields is unknown now, so no later value of them may be skipped as a no-op.
    redis.call('HDEL', dlv, snap[i])
  end
  redis.call('DEL', fly)
  redis.call('ZREM', KEYS[2], pid)
  redis.call('HDEL', KEYS[3], pid)
  redis.call('HSETNX', KEYS[4], pid, now)
  redis.call('ZADD', KEYS[1], now, pid)
  redis.call('HINCRBY', KEYS[5], 'lease_expired', 1)
end

local out = {}
local noop, noop_prospects = 0, 0
-- No-op skips per audience (mapping ID N of a customN field): "mN:noop".
local noop_by = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
for _, pid in ipairs(due) do
  redis.call('ZREM', KEYS[1], pid)
  local pend, fly, dlv = kp .. 'pend:' .. pid, kp .. 'fly:' .. pid, kp .. 'dlv:' .. pid
  local fields = redis.call('HGETALL', pend)
  redis.call('DEL', pend)
  -- first-seen stays until delivery: it is the lag operators see.
  local first = redis.call('HGET', KEYS[4], pid) or now
  local keep = {}
  for i = 1, #fields, 2 do
    if redis.call('HGET', dlv, fields[i]) ~= fields[i + 1] then
      keep[#keep + 1] = fields[i]
      keep[#keep + 1] = fields[i + 1]
    else
      noop = noop + 1
      local n = string.match(fields[i], '^custom(%d+)$')
      if n then noop_by['m' .. n .. ':noop'] = (noop_by['m' .. n .. ':noop'] or 0) + 1 end
    end
  end
  if #keep > 0 then
    redis.call('HSET', fly, unpack(keep))
    redis.call('ZADD', KEYS[2], now + lease, pid)
    redis.call('HSET', KEYS[3], pid, token)
    out[#out + 1] = pid
    out[#out + 1] = first
    out[#out + 1] = redis.call('HGET', KEYS[6], pid) or 0
    out[#out + 1] = redis.call('HGET', KEYS[7], pid) or 0
    out[#out + 1] = #keep / 2
    for i = 1, #keep do out[#out + 1] = keep[i] end
  else
    -- Nothing left to send: Outreach holds it all, so no failure is running either.
    redis.call('HDEL', KEYS[4], pid)
    redis.call('HDEL', KEYS[6], pid)
    redis.call('HDEL', KEYS[7], pid)
    noop_prospects = noop_prospects + 1
  end
end
if noop > 0 then noop_by['fields_noop'] = noop end
if noop_prospects > 0 then noop_by['prospects_noop'] = noop_prospects end
if next(noop_by) ~= nil then
  for name, n in pairs(noop_by) do
    redis.call('HINCRBY', KEYS[5], name, n)
    redis.call('HINCRBY', KEYS[8], name, n)
  end
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[6]))
end
return out
