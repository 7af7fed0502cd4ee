-- Records what Outreach said about a user's quota: its remaining budget and/or a pause, and
-- that one of our requests was answered.
-- Within one window (resets within `tol` of each other) the server's lowest Remaining wins:
-- answers arrive out of order. A newer window replaces the record; an older one is stale.
-- A pause only ever moves later.
-- KEYS[1] server budget (hash), KEYS[2] pause (string), KEYS[3] grant expiries (zset),
-- KEYS[4] grants' permits still out (hash): see quota_grants.lua.
-- ARGV: now, remaining ('' = not reported), its reset (epoch s), pause until ('' = none), tol,
--       when the answered request was sent ('' = not one of ours), the reported limit (''),
--       '1' when the request got an answer (not a transport failure), the id of the grant
--       whose permit the request used ('' = none), hold ms (the rest of that grant lives
--       this much longer).
-- Returns the pause in force (epoch s) or '0'.
local now, tol = tonumber(ARGV[1]), tonumber(ARGV[5])
-- Kept past its reset so the next window starts with a probe (see quota_reserve.lua).
local STALE_REPORT_KEEP_MS = 3600000
-- How long "this server does not report" is believed (BLIND_KEEP_S in quota_reserve.lua).
local BLIND_KEEP_MS = 3600000
local function t(x) return string.format('%.17g', x) end

if ARGV[9] ~= '' then
  grants_settle(KEYS[3], KEYS[4], ARGV[9], 1, grants_now(), tonumber(ARGV[10]))
end

if ARGV[6] ~= '' then
  local single = tonumber(redis.call('HGET', KEYS[1], 'single') or '-1')
  if single >= 0 and tonumber(ARGV[6]) >= single then redis.call('HDEL', KEYS[1], 'single') end
  if ARGV[2] == '' and not redis.call('HGET', KEYS[1], 'remaining') then
    -- A cold-start probe came back without a figure: answered, this server does not report
    -- (own mode from now on); unanswered, the next request probes again.
    if ARGV[8] == '1' then
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
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'limit', ARGV[7]) end
  redis.call('PEXPIREAT', KEYS[1], math.ceil(reset * 1000) + STALE_REPORT_KEEP_MS)
end

if ARGV[2] ~= '' and tonumber(ARGV[3]) > now then
  record(tonumber(ARGV[2]), tonumber(ARGV[3]))
end

local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] ~= '' then
  local wanted = tonumber(ARGV[4])
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
