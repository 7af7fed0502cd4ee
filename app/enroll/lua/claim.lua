-- Claim due enrollments (and exits) under a lease: each becomes "sending" with ``token``;
-- its due time becomes the lease's end, so one whose worker died comes back, marked as of
-- unknown outcome (it is looked up in Outreach before anything is sent again).
-- KEYS[1] enrollment states, KEYS[2] enrollment due, KEYS[3] pause hash.
-- ARGV: now_ms, lease_ms, token, most. Returns {member, record JSON, ...}.
local now, lease, token, most = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local paused = tonumber(redis.call('HGET', KEYS[3], 'until_ms') or 0)
if paused > now then return {} end
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, most)) do
  local raw = redis.call('HGET', KEYS[1], member)
  local cur = nil
  if raw then cur = cjson.decode(raw) end
  if cur == nil or (cur.st ~= 'pending' and cur.st ~= 'exiting' and cur.st ~= 'sending') then
    redis.call('ZREM', KEYS[2], member)
  else
    if cur.st == 'sending' then cur.unk = 1 end
    cur.st, cur.tok = 'sending', token
    redis.call('HSET', KEYS[1], member, cjson.encode(cur))
    redis.call('ZADD', KEYS[2], now + lease, member)
    out[#out + 1] = member
    out[#out + 1] = cjson.encode(cur)
  end
end
return out
