-- An email's prospect(s) are known: its pending fields become their pending fields, merged by
-- version exactly as if they had arrived with the prospect's id (newer wins, ties to this
-- one), and the email's state is gone, in one step. After a create, the fields the create
-- carried (snapshot version unchanged since) are recorded as delivered instead: no PATCH.
-- KEYS[1] email due, KEYS[2] email leases, KEYS[3] email lease tokens, KEYS[4] email first
-- seen, KEYS[5] create intents, KEYS[6] prospect -> email hash, KEYS[7] email pending,
-- KEYS[8] email versions, KEYS[9] due, KEYS[10] leases, KEYS[11] first seen, then per
-- prospect its pending, versions and delivered hashes (KEYS[9 + 3i] .. KEYS[11 + 3i]).
-- ARGV: email, token, now_ms, n_snapshot, (field, version) * n_snapshot, prospect ids.
-- Returns the number of fields made pending, or -1 when the claim is no longer the token's.
local email, token, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HGET', KEYS[3], email) ~= token then return -1 end
local n_snap = tonumber(ARGV[4])
local sent = {}
for j = 0, n_snap - 1 do sent[ARGV[5 + 2 * j]] = ARGV[6 + 2 * j] end
local first = redis.call('HGET', KEYS[4], email) or tostring(now)
local flat = redis.call('HGETALL', KEYS[7])
local moved = 0
local i = 0
for a = 5 + 2 * n_snap, #ARGV do
  i = i + 1
  local pid = ARGV[a]
  local pend, ver, dlv = KEYS[9 + 3 * i], KEYS[10 + 3 * i], KEYS[11 + 3 * i]
  local changed = false
  for j = 1, #flat, 2 do
    local field, value = flat[j], flat[j + 1]
    local v = redis.call('HGET', KEYS[8], field) or '0'
    local mark = redis.call('HGET', ver, field)
    if (not mark) or tonumber(v) >= tonumber(mark) then
      redis.call('HSET', ver, field, v)
      if sent[field] == v then
        redis.call('HSET', dlv, field, value)
        redis.call('HDEL', pend, field)
      else
        redis.call('HSET', pend, field, value)
        moved = moved + 1
        changed = true
      end
    end
  end
  if changed then
    redis.call('HSETNX', KEYS[11], pid, first)
    -- A prospect in flight is rescheduled by its ack; one already due keeps its time.
    if not redis.call('ZSCORE', KEYS[10], pid) then
      redis.call('ZADD', KEYS[9], 'NX', now, pid)
    end
  end
  redis.call('HSET', KEYS[6], pid, email)
end
redis.call('DEL', KEYS[7], KEYS[8])
redis.call('ZREM', KEYS[1], email)
redis.call('ZREM', KEYS[2], email)
redis.call('HDEL', KEYS[3], email)
redis.call('HDEL', KEYS[4], email)
redis.call('HDEL', KEYS[5], email)
return moved
