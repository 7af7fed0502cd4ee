-- Claim emails due for resolution under a lease (a killed worker's claims come back when it
-- ends), with a snapshot of each one's pending fields and their versions.
-- The caller names the candidates (read just before: leases expired, then emails due) so
-- that every key is declared, as Redis Cluster wants; each is checked again here.
-- KEYS[1] email due zset, KEYS[2] email leases zset, KEYS[3] email lease tokens hash, then per
-- candidate, in ARGV's order, its pending and versions hashes (KEYS[2 + 2i], KEYS[3 + 2i]).
-- ARGV: now_ms, lease_ms, token, then the candidates.
-- Returns a flat list: per email claimed, email, n_fields, (field, value, version) * n.
local now, lease, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {}
local function ready(zset, email)
  local score = redis.call('ZSCORE', zset, email)
  return score and tonumber(score) <= now
end
for i = 4, #ARGV do
  local email = ARGV[i]
  local pend, ver = KEYS[2 + 2 * (i - 3)], KEYS[3 + 2 * (i - 3)]
  if ready(KEYS[1], email) or ready(KEYS[2], email) then
    redis.call('ZREM', KEYS[1], email)
    local flat = redis.call('HGETALL', pend)
    if #flat == 0 then
      -- Nothing waits under this email any more: its claim simply ends.
      redis.call('ZREM', KEYS[2], email)
      redis.call('HDEL', KEYS[3], email)
    else
      redis.call('ZADD', KEYS[2], now + lease, email)
      redis.call('HSET', KEYS[3], email, token)
      out[#out + 1] = email
      out[#out + 1] = #flat / 2
      for j = 1, #flat, 2 do
        out[#out + 1] = flat[j]
        out[#out + 1] = flat[j + 1]
        out[#out + 1] = redis.call('HGET', ver, flat[j]) or '0'
      end
    end
  end
end
return out
