-- Records what Outreach said about a user's quota: its remaining budget and/or a pause.
-- Within one window (resets within `tol` of each other) the lower of the new Remaining and
-- the old one minus our grants since wins: responses arrive out of order and requests are
-- still in flight. A newer window replaces the record; an older one is stale and ignored.
-- A pause only ever moves later.
-- KEYS[1] server budget (hash), KEYS[2] pause (string).
-- ARGV: now, remaining ('' = not reported), its reset (epoch s), pause until ('' = none), tol,
--       when the answered request was sent ('' = unknown): the answer to a careful single
--       (see quota_reserve.lua) lets the next one go.
-- Returns the pause in force (epoch s) or '0'.
local now, tol = tonumber(ARGV[1]), tonumber(ARGV[5])
local STALE_REPORT_KEEP_MS = 3600000

local function record(remaining, reset)
  local s = redis.call('HMGET', KEYS[1], 'remaining', 'reset', 'granted')
  local old_reset = tonumber(s[2] or '0')
  if s[1] and old_reset > now then
    if reset < old_reset - tol then return end
    if reset <= old_reset + tol then
      remaining = math.min(remaining, tonumber(s[1]) - tonumber(s[3] or '0'))
      reset = math.max(reset, old_reset)
    end
  end
  redis.call('HSET', KEYS[1], 'remaining', math.max(remaining, 0),
    'reset', string.format('%.17g', reset), 'granted', 0, 'at', string.format('%.17g', now))
  redis.call('HDEL', KEYS[1], 'probe')
  redis.call('HINCRBY', KEYS[1], 'gen', 1)
  -- Kept past its reset so the next window starts with a probe (see quota_reserve.lua).
  redis.call('PEXPIREAT', KEYS[1], math.ceil(reset * 1000) + STALE_REPORT_KEEP_MS)
end

if ARGV[2] ~= '' and tonumber(ARGV[3]) > now then
  record(tonumber(ARGV[2]), tonumber(ARGV[3]))
end
if ARGV[6] ~= '' then
  local single = tonumber(redis.call('HGET', KEYS[1], 'single') or '-1')
  if single >= 0 and tonumber(ARGV[6]) >= single then redis.call('HDEL', KEYS[1], 'single') end
end

local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] ~= '' then
  local wanted = tonumber(ARGV[4])
  if wanted > paused and wanted > now then
    redis.call('SET', KEYS[2], string.format('%.17g', wanted))
    redis.call('PEXPIREAT', KEYS[2], math.ceil(wanted * 1000))
    paused = wanted
  end
end
if paused > now then
  return string.format('%.17g', paused)
end
return '0'
