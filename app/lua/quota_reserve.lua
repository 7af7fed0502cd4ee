-- Checks a user's shared pause and reserves permits against the server's last reported
-- budget in one step, so two workers cannot both spend the same server-reported remainder.
-- KEYS[1] pause (string: resume epoch s), KEYS[2] server budget (hash: remaining, reset,
-- granted since the observation, gen of the observation).
-- ARGV: now (epoch s), permits wanted (the caller's own window already allows them).
-- Returns {paused until or '0', permits reserved, server reset if its budget is spent or '0',
-- gen the reservation was counted under or '' when no server budget applies}.
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])

local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return {string.format('%.17g', paused), 0, '0', ''}
end

local s = redis.call('HMGET', KEYS[2], 'remaining', 'reset', 'granted', 'gen')
if not s[1] or tonumber(s[2] or '0') <= now then
  return {'0', want, '0', ''}
end

local left = tonumber(s[1]) - tonumber(s[3] or '0')
local n = math.max(0, math.min(want, left))
if n > 0 then
  redis.call('HINCRBY', KEYS[2], 'granted', n)
end
local spent = '0'
if left <= 0 then spent = s[2] end
return {'0', n, spent, s[4] or ''}
