-- Checks a user's shared pause and reserves permits against the server's last reported
-- budget in one step, so two workers cannot both spend the same server-reported remainder.
--
-- Mode: with no report, our own window models the quota ("own"). With a report whose limit
-- is known and not above ours, the server's figure alone governs ("server"): our moving
-- window would only add a second, out-of-phase limit. Otherwise both apply ("both").
-- What the server has left for us is its lowest report of the window minus our requests
-- still in flight (granted, not yet answered: the report may not count them yet). Those are
-- the permits of the live grants (quota_grants.lua): a grant nobody answers for `hold`
-- expires, so permits of a killed worker come back instead of being lost for good.
-- Another integration may spend the same budget between two of our observations, so that
-- figure is spent freely only down to a careful reserve (a share of the server's reported
-- limit: our configured one may be far above it); below it one request goes out at a
-- time, each after the answer to the one before (a 429 then costs at most one request).
-- A stale report (its window ended, or older than `fresh`) is refreshed by one probe first,
-- and nothing is sent within `guard` of the reset: it could land after it, unseen.
-- KEYS[1] pause (string: resume epoch s), KEYS[2] server budget (hash: remaining, reset,
-- limit, at, probe, single, blind), KEYS[3] grant expiries (zset), KEYS[4] grants' permits
-- still out (hash).
-- Cold start: with no report at all, one probe goes first too (someone else may already
-- have spent most of the window), unless an earlier answer came back without any figure
-- (`blind`: this server does not report, our own window alone models it).
-- ARGV[1]: one JSON document (ReserveArgs in app/ratelimit/scripts.py): now_s, want,
--       probe_timeout_s (also frees a single whose answer was lost), careful_share and
--       careful_min (the reserve: this share of the governing limit, at least this many),
--       fresh_s, reserve_share (of the governing limit kept for the user), amount (our
--       configured limit), free (permits free
--       in our own window), guard_s, probe_first (probe at cold start), grant (this grant's
--       id), hold_ms (how long a grant lives without an answer or a refund).
-- Returns {paused until or '0', permits, retry-at epoch s or '0', 'probe' or '', mode}.
local a = cjson.decode(ARGV[1])
local now, want = a.now_s, a.want
local timeout, fresh = a.probe_timeout_s, a.fresh_s
local amount, free = a.amount, a.free
local guard, id, hold = a.guard_s, a.grant, a.hold_ms
-- How long "this server does not report" is believed before it is probed again.
local BLIND_KEEP_S = 3600
-- A budget hash without a report (probe, blind) expires after this without news.
local NO_REPORT_KEEP_MS = 3600000
local function t(x) return string.format('%.17g', x) end
local now_ms = grants_now()
local function grant(n, kind, mode)
  if n > 0 then grants_add(KEYS[3], KEYS[4], id, n, now_ms, hold) end
  return {'0', n, '0', kind, mode}
end

local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return {t(paused), 0, '0', '', 'paused'}
end

grants_prune(KEYS[3], KEYS[4], now_ms)
-- The single count kept here before grants had ids: never reliably given back, so dropped.
redis.call('HDEL', KEYS[2], 'inflight')
local s = redis.call('HMGET', KEYS[2], 'remaining', 'reset', 'limit', 'at', 'probe', 'single')
if not s[1] then
  local blind = tonumber(redis.call('HGET', KEYS[2], 'blind') or '-1e18')
  if a.probe_first and now - blind > BLIND_KEEP_S and math.min(want, free) > 0 then
    if tonumber(s[5] or '0') > now then
      return {'0', 0, t(now + 0.02), 'probe', 'own'}
    end
    redis.call('HSET', KEYS[2], 'probe', t(now + timeout))
    if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], NO_REPORT_KEEP_MS) end
    return grant(1, 'probe', 'own')
  end
  return grant(math.min(want, free), '', 'own')
end
local mode = 'both'
local reported = tonumber(s[3] or '')
if reported and reported <= amount then mode = 'server' end
if mode == 'both' then want = math.min(want, free) end
if want <= 0 then
  return {'0', 0, '0', '', mode}
end

local reset = tonumber(s[2])
local told = tonumber(s[1])
-- The reserves follow the limit Outreach reports when it reports one: where the 429s come
-- from (our window already keeps reserve_share of ours when ours is lower). As in
-- app/ratelimit/governing.py `quota_limits`.
local basis = reported or amount
local careful = math.max(a.careful_min, math.ceil(basis * a.careful_share))
if mode == 'server' then
  told = told - (basis - math.floor(tonumber(string.format('%.6f', basis * (1 - a.reserve_share)))))
end
local inflight, first_expiry = grants_out(KEYS[3], KEYS[4], now_ms)
local left = told - inflight
if reset > now and left <= 0 then
  -- Within a window the server's figure only falls: nothing to learn before the reset,
  -- unless our own grants in flight hold the rest (one may expire: look again then).
  if told > 0 and first_expiry then
    return {'0', 0, t(math.min(reset, first_expiry / 1000)), '', mode}
  end
  return {'0', 0, s[2], '', mode}
end
if reset <= now or now - tonumber(s[4] or '0') > fresh then
  if tonumber(s[5] or '0') > now then
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
  local single = tonumber(s[6] or '0')
  if single > 0 and single + timeout > now then
    return {'0', 0, t(now + 0.02), '', mode}
  end
  redis.call('HSET', KEYS[2], 'single', t(now))
  n = 1
end
return grant(n, '', mode)
