-- Claim up to `batch` due prospects of one destination under a lease.
-- Expired leases (a crashed worker) are first put back to pending. Fields whose pending value
-- equals the value Outreach last confirmed are dropped: a prospect left with nothing costs no
-- request.
-- The caller names the candidates (read just before: leases expired, then prospects due) so
-- that every key is declared, as Redis Cluster wants; each is checked again here, and one
-- another claim took meanwhile is skipped and counted (the caller then looks again).
-- KEYS[1] due, KEYS[2] leases, KEYS[3] lease tokens, KEYS[4] first-seen, KEYS[5] counters,
-- KEYS[6] attempts hash, KEYS[7] failing-since hash, KEYS[8] this hour's metrics hash
-- (app/store/counters.py), then per candidate, in ARGV's order, its in-flight, pending and
-- delivered hashes (KEYS[6 + 3i] .. KEYS[8 + 3i]).
-- ARGV: now_ms, lease_ms, batch, token, TTL of the hourly metrics hash in seconds, how many
--       of the candidates come from expired leases, then the candidates' ids.
-- Returns a flat list: candidates skipped, then per prospect id, first_seen_ms, attempts,
-- failing_since_ms (0: none), n_fields, (field, value) * n.
local now, lease, batch, token = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n_expired = tonumber(ARGV[6])
local function hashes(i)
  return KEYS[6 + 3 * i], KEYS[7 + 3 * i], KEYS[8 + 3 * i]
end
local function ready(zset, pid)
  local score = redis.call('ZSCORE', zset, pid)
  return score and tonumber(score) <= now
end

for i = 1, n_expired do
  local pid = ARGV[6 + i]
  if ready(KEYS[2], pid) then
    local fly, pend, dlv = hashes(i)
    local snap = redis.call('HGETALL', fly)
    for j = 1, #snap, 2 do
      redis.call('HSETNX', pend, snap[j], snap[j + 1])
      -- The worker may have sent the snapshot before it died: what Outreach holds for these
      -- fields is unknown now, so no later value of them may be skipped as a no-op.
      redis.call('HDEL', dlv, snap[j])
    end
    redis.call('DEL', fly)
    redis.call('ZREM', KEYS[2], pid)
    redis.call('HDEL', KEYS[3], pid)
    redis.call('HSETNX', KEYS[4], pid, now)
    redis.call('ZADD', KEYS[1], now, pid)
    redis.call('HINCRBY', KEYS[5], 'lease_expired', 1)
  end
end

local out = {0}
local taken, skipped = 0, 0
local noop, noop_prospects = 0, 0
-- No-op skips per audience (mapping ID N of a customN field): "mN:noop".
local noop_by = {}
for i = 1, #ARGV - 6 do
  local pid = ARGV[6 + i]
  if taken >= batch then break end
  if not ready(KEYS[1], pid) then
    skipped = skipped + 1
  else
    taken = taken + 1
    redis.call('ZREM', KEYS[1], pid)
    local fly, pend, dlv = hashes(i)
    local fields = redis.call('HGETALL', pend)
    redis.call('DEL', pend)
    -- first-seen stays until delivery: it is the lag operators see.
    local first = redis.call('HGET', KEYS[4], pid) or now
    local keep = {}
    for j = 1, #fields, 2 do
      if redis.call('HGET', dlv, fields[j]) ~= fields[j + 1] then
        keep[#keep + 1] = fields[j]
        keep[#keep + 1] = fields[j + 1]
      else
        noop = noop + 1
        local n = string.match(fields[j], '^custom(%d+)$')
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
      for j = 1, #keep do out[#out + 1] = keep[j] end
    else
      -- Nothing left to send: Outreach holds it all, so no failure is running either.
      redis.call('HDEL', KEYS[4], pid)
      redis.call('HDEL', KEYS[6], pid)
      redis.call('HDEL', KEYS[7], pid)
      noop_prospects = noop_prospects + 1
    end
  end
end
out[1] = skipped
if noop > 0 then noop_by['fields_noop'] = noop end
if noop_prospects > 0 then noop_by['prospects_noop'] = noop_prospects end
if next(noop_by) ~= nil then
  for name, n in pairs(noop_by) do
    redis.call('HINCRBY', KEYS[5], name, n)
    redis.call('HINCRBY', KEYS[8], name, n)
  end
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[5]))
end
return out
