-- The oldest first-seen time of a destination's pending (or in-flight) prospects: the lag.
-- Exact up to ARGV[1] prospects; beyond that, the oldest of a random sample of that many, so
-- a status read never holds Redis long however large the backlog.
-- KEYS[1] first-seen hash (prospect -> ms). Returns {oldest_ms or -1, exact (1/0), prospects}.
local limit = tonumber(ARGV[1])
local n = redis.call('HLEN', KEYS[1])
if n == 0 then return {-1, 1, 0} end
local oldest = nil
if n <= limit then
  for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
    local ms = tonumber(v)
    if oldest == nil or ms < oldest then oldest = ms end
  end
  return {oldest, 1, n}
end
local sample = redis.call('HRANDFIELD', KEYS[1], limit, 'WITHVALUES')
for i = 2, #sample, 2 do
  local ms = tonumber(sample[i])
  if oldest == nil or ms < oldest then oldest = ms end
end
return {oldest, 0, n}
