-- Checks a user's shared pause and reserves permits against the server's last reported
-- budget in one step, so two workers cannot both spend the same server-reported remainder.
-- KEYS[1] pause (string: resume epoch s), KEYS[2] server budget (hash: remaining, reset,
-- granted since the observation, gen of the observation).
-- Another integration may spend the same budget between two of our observations, so the
-- server's figure is spent freely only down to a careful reserve; below it one request at a
-- time goes out, each after the answer to the one before, so an overshoot costs at most one
-- 429 (which then pauses the user). When the report is stale (its window ended, or it is
-- older than `fresh` seconds: others may have spent since), one probe goes out and nothing
-- more until its answer brings a fresh report.
-- ARGV: now (epoch s), permits wanted (the caller's own window already allows them),
--       seconds before an unanswered probe may be repeated, careful reserve (permits),
--       fresh (seconds a report may be relied on for a burst).
-- The unanswered-probe timeout (ARGV[3]) also frees a careful single whose answer was lost.
-- Returns {paused until or '0', permits reserved, server reset if its budget is spent or '0',
-- gen the reservation was counted under, 'probe' for a probe, or '' when no server budget
-- applies}.
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])

local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return {string.format('%.17g', paused), 0, '0', ''}
end

local s = redis.call('HMGET', KEYS[2], 'remaining', 'reset', 'granted', 'gen', 'probe', 'at', 'single')
if not s[1] or want <= 0 then
  return {'0', want, '0', ''}
end
if tonumber(s[2] or '0') <= now or now - tonumber(s[6] or '0') > tonumber(ARGV[5]) then
  if tonumber(s[5] or '0') > now then
    return {'0', 0, string.format('%.17g', now + 0.05), ''}
  end
  redis.call('HSET', KEYS[2], 'probe', string.format('%.17g', now + tonumber(ARGV[3])))
  return {'0', 1, '0', 'probe'}
end

local granted = tonumber(s[3] or '0')
local left = tonumber(s[1]) - granted
local careful = tonumber(ARGV[4])
local n = 0
if left > careful then
  n = math.min(want, left - careful)
elseif left > 0 then
  -- One at a time: until the answer to the outstanding one (sent at or after `single`).
  local single = tonumber(s[7] or '0')
  if single > 0 and single + tonumber(ARGV[3]) > now then
    return {'0', 0, string.format('%.17g', now + 0.02), ''}
  end
  redis.call('HSET', KEYS[2], 'single', string.format('%.17g', now))
  n = 1
end
if n > 0 then
  redis.call('HINCRBY', KEYS[2], 'granted', n)
end
local spent = '0'
if left <= 0 then spent = s[2] end
return {'0', n, spent, s[4] or ''}
