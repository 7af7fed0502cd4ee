-- Checks a user's shared pause and reserves permits against the server's last reported
-- budget in one step, so two workers cannot both spend the same server-reported remainder.
--
-- Mode: with no report, our own window models the quota ("own"). With a report whose limit
-- is known and not above ours, the server's figure alone governs ("server"): our moving
-- window would only add a second, out-of-phase limit. Otherwise both apply ("both").
-- What the server has left for us is its lowest report of the window minus our requests
-- still in flight (granted, not yet answered: the report may not count them yet).
-- Another integration may spend the same budget between two of our observations, so that
-- figure is spent freely only down to a careful reserve; below it one request goes out at a
-- time, each after the answer to the one before (a 429 then costs at most one request).
-- A stale report (its window ended, or older than `fresh`) is refreshed by one probe first,
-- and nothing is sent within `guard` of the reset: it could land after it, unseen.
-- KEYS[1] pause (string: resume epoch s), KEYS[2] server budget (hash: remaining, reset,
-- limit, at, inflight, probe, single).
-- Cold start: with no report at all, one probe goes first too (someone else may already
-- have spent most of the window), unless an earlier answer came back without any figure
-- (`blind`: this server does not report, our own window alone models it).
-- ARGV: now, permits wanted, probe timeout s (also frees a single whose answer was lost),
--       careful reserve, fresh s, headroom (permits kept for the user), our limit amount,
--       permits free in our own window, guard s, '1' to probe at cold start.
-- Returns {paused until or '0', permits, retry-at epoch s or '0', 'probe' or '', mode}.
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local timeout, careful, fresh = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local headroom, amount, free = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local guard = tonumber(ARGV[9])
-- How long "this server does not report" is believed before it is probed again.
local BLIND_KEEP_S = 3600
local function t(x) return string.format('%.17g', x) end
local function grant(n, kind, mode)
  if n > 0 then redis.call('HINCRBY', KEYS[2], 'inflight', n) end
  return {'0', n, '0', kind, mode}
end

local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return {t(paused), 0, '0', '', 'paused'}
end

local s = redis.call('HMGET', KEYS[2], 'remaining', 'reset', 'limit', 'at', 'inflight',
  'probe', 'single')
if not s[1] then
  local blind = tonumber(redis.call('HGET', KEYS[2], 'blind') or '-1e18')
  if ARGV[10] == '1' and now - blind > BLIND_KEEP_S and math.min(want, free) > 0 then
    if tonumber(s[6] or '0') > now then
      return {'0', 0, t(now + 0.02), 'probe', 'own'}
    end
    redis.call('HSET', KEYS[2], 'probe', t(now + timeout))
    return grant(1, 'probe', 'own')
  end
  return grant(math.min(want, free), '', 'own')
end
local mode = 'both'
if s[3] and tonumber(s[3]) <= amount then mode = 'server' end
if mode == 'both' then want = math.min(want, free) end
if want <= 0 then
  return {'0', 0, '0', '', mode}
end

local reset = tonumber(s[2])
local left = tonumber(s[1]) - tonumber(s[5] or '0')
if mode == 'server' then left = left - headroom end
if reset > now and left <= 0 then
  -- Within a window the server's figure only falls: nothing to learn before the reset.
  return {'0', 0, s[2], '', mode}
end
if reset <= now or now - tonumber(s[4] or '0') > fresh then
  if tonumber(s[6] or '0') > now then
    return {'0', 0, t(now + 0.02), 'probe', mode}
  end
  redis.call('HSET', KEYS[2], 'probe', t(now + timeout))
  return grant(1, 'probe', mode)
end
if reset - now < guard then
  return {'0', 0, s[2], '', mode}
end

local n = math.min(want, left - careful)
if n <= 0 then
  local single = tonumber(s[7] or '0')
  if single > 0 and single + timeout > now then
    return {'0', 0, t(now + 0.02), '', mode}
  end
  redis.call('HSET', KEYS[2], 'single', t(now))
  n = 1
end
return grant(n, '', mode)
