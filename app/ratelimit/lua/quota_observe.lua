-- Records what Outreach said about a user's quota: its remaining budget and/or a pause, and
-- that one of our requests was answered.
-- Within one window (resets within `tol` of each other) the server's lowest Remaining wins:
-- answers arrive out of order. A newer window replaces the record; an older one is stale.
-- A pause only ever moves later.
-- KEYS[1] server budget (hash), KEYS[2] pause (string), KEYS[3] grant expiries (zset),
-- KEYS[4] grants' permits still out (hash): see quota_grants.lua.
-- ARGV[1]: one JSON document (ObserveArgs in app/ratelimit/scripts.py); absent fields were
--       not reported: now_s, remaining, reset_s (of that remaining), pause_until_s,
--       tolerance_s, sent_s (when the answered request left; absent: not one of ours),
--       limit (the reported one), answered (the request got an answer, not a transport
--       failure), grant (whose permit the request used; '' = none), hold_ms (the rest of
--       that grant lives this much longer).
-- Returns the pause in force (epoch s) or '0'.
local a = cjson.decode(ARGV[1])
local now, tol = a.now_s, a.tolerance_s
-- Kept past its reset so the next window starts with a probe (see quota_reserve.lua).
local STALE_REPORT_KEEP_MS = 3600000
-- How long "this server does not report" is believed (BLIND_KEEP_S in quota_reserve.lua).
local BLIND_KEEP_MS = 3600000
local function t(x) return string.format('%.17g', x) end

if a.grant and a.grant ~= '' then
  grants_settle(KEYS[3], KEYS[4], a.grant, 1, grants_now(), a.hold_ms)
end

if a.sent_s then
  local single = tonumber(redis.call('HGET', KEYS[1], 'single') or '-1')
  if single >= 0 and a.sent_s >= single then redis.call('HDEL', KEYS[1], 'single') end
  if not a.remaining and not redis.call('HGET', KEYS[1], 'remaining') then
    -- A cold-start probe came back without a figure: answered, this server does not report
    -- (own mode from now on); unanswered, the next request probes again.
    if a.answered then
      redis.call('HSET', KEYS[1], 'blind', t(now))
      if redis.call('PTTL', KEYS[1]) < BLIND_KEEP_MS then
        redis.call('PEXPIRE', KEYS[1], BLIND_KEEP_MS)
      end
    end
    redis.call('HDEL', KEYS[1], 'probe')
  end
end

local function record(remaining, reset)
  local s = redis.call('HMGET', KEYS[1], 'remaining', 'reset')
  local old_reset = tonumber(s[2] or '0')
  if s[1] and old_reset > now then
    if reset < old_reset - tol then return end
    if reset <= old_reset + tol then
      remaining = math.min(remaining, tonumber(s[1]))
      reset = math.max(reset, old_reset)
    end
  end
  redis.call('HSET', KEYS[1], 'remaining', math.max(remaining, 0), 'reset', t(reset), 'at', t(now))
  redis.call('HDEL', KEYS[1], 'probe')
  if a.limit then redis.call('HSET', KEYS[1], 'limit', a.limit) end
  redis.call('PEXPIREAT', KEYS[1], math.ceil(reset * 1000) + STALE_REPORT_KEEP_MS)
end

if a.remaining and a.reset_s > now then
  record(a.remaining, a.reset_s)
end

local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if a.pause_until_s then
  local wanted = a.pause_until_s
  if wanted > paused and wanted > now then
    redis.call('SET', KEYS[2], t(wanted))
    redis.call('PEXPIREAT', KEYS[2], math.ceil(wanted * 1000))
    paused = wanted
  end
end
if paused > now then
  return t(paused)
end
return '0'
