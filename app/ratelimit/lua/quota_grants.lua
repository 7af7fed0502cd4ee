-- Grants in flight, shared by quota_reserve, quota_observe, quota_refund and quota_state.lua
-- (this file is prepended to each: the prelude of app/ratelimit/scripts.py `script`).
-- Every grant of permits has an id. A sorted set holds id -> expiry (ms, Redis's clock: the
-- same for every host) and a hash id -> permits still out (granted, not yet answered nor
-- given back). A grant counts as in flight until all its permits are answered or given back,
-- or until it expires: each answer and each refund pushes its expiry out by `hold`, so only a
-- grant whose holder died (a killed worker) or lost track of it (an exception between the
-- grant and the answers) stops being renewed, and its permits come back. Both keys expire
-- with their last grant, so nothing outlives the grants it describes.
local function grants_now()
  local tm = redis.call('TIME')
  return tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
end

local function grants_chunks(list, fn)
  for i = 1, #list, 500 do fn(unpack(list, i, math.min(i + 499, #list))) end
end

-- Both keys expire with the latest grant (none left: the keys are already gone).
local function grants_touch(zkey, hkey)
  local last = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
  if last[2] then
    local at = math.ceil(tonumber(last[2]))
    redis.call('PEXPIREAT', zkey, at)
    redis.call('PEXPIREAT', hkey, at)
  end
end

-- Forgets the grants expired by `now_ms`.
local function grants_prune(zkey, hkey, now_ms)
  local dead = redis.call('ZRANGEBYSCORE', zkey, '-inf', now_ms)
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now_ms)
    grants_chunks(dead, function(...) redis.call('HDEL', hkey, ...) end)
  end
end

-- Permits of the grants still live at `now_ms` (never negative), and the earliest expiry
-- among them (ms; nil when none is live).
local function grants_out(zkey, hkey, now_ms)
  local live = redis.call('ZRANGEBYSCORE', zkey, '(' .. now_ms, '+inf', 'WITHSCORES')
  local ids, first = {}, nil
  for i = 1, #live, 2 do
    ids[#ids + 1] = live[i]
    if not first then first = tonumber(live[i + 1]) end
  end
  local out = 0
  grants_chunks(ids, function(...)
    for _, n in ipairs(redis.call('HMGET', hkey, ...)) do
      out = out + math.max(0, tonumber(n or '0') or 0)
    end
  end)
  return out, first
end

-- Records a grant of `n` permits, live until `hold_ms` after `now_ms` unless renewed.
local function grants_add(zkey, hkey, id, n, now_ms, hold_ms)
  redis.call('ZADD', zkey, now_ms + hold_ms, id)
  redis.call('HSET', hkey, id, n)
  grants_touch(zkey, hkey)
end

-- `n` permits of grant `id` were answered or given back: they no longer count; the rest of
-- the grant, if any, lives `hold_ms` more. A grant already expired (or settled) is left alone:
-- its permits stopped counting when it expired, so nothing is taken twice.
local function grants_settle(zkey, hkey, id, n, now_ms, hold_ms)
  if id == '' then return end
  local expiry = tonumber(redis.call('ZSCORE', zkey, id) or '0')
  if expiry <= now_ms then
    if expiry > 0 then
      redis.call('ZREM', zkey, id)
      redis.call('HDEL', hkey, id)
    end
    return
  end
  if tonumber(redis.call('HINCRBY', hkey, id, -n)) <= 0 then
    redis.call('ZREM', zkey, id)
    redis.call('HDEL', hkey, id)
    return
  end
  redis.call('ZADD', zkey, math.max(expiry, now_ms + hold_ms), id)
  grants_touch(zkey, hkey)
end

