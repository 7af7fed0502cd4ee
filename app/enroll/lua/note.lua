-- Record the enrollments (and exits) a delivered audience field calls for, before its claim
-- is settled: only while the claim is still ``token``'s (a drain that lost it to another
-- notes nothing; the one that took it over notes it), so the changes are noted in the
-- order the fields were delivered. Noting twice is harmless: a pending one stays pending.
-- KEYS[1] lease tokens, KEYS[2] enrollment states, KEYS[3] enrollment due, KEYS[4] counts.
-- ARGV: token, now_ms, JSON [[prospect, sequence, audience, "in"|"out", reenroll 0|1,
--       on_exit, owner], ...]; owner (optional, else the prospect) is the field of KEYS[1]
--       whose claim must be the token's: a prospect created for an email is the email's.
-- Returns how many changed a state.
local token, now = ARGV[1], tonumber(ARGV[2])
local changed = 0
for _, it in ipairs(cjson.decode(ARGV[3])) do
  local pid, seq, aud, kind, re, ox = tostring(it[1]), tostring(it[2]), it[3], it[4], it[5], it[6]
  local owner = pid
  if it[7] ~= nil then owner = tostring(it[7]) end
  if redis.call('HGET', KEYS[1], owner) == token then
    local member = pid .. ':' .. seq
    local raw = redis.call('HGET', KEYS[2], member)
    local cur = nil
    if raw then cur = cjson.decode(raw) end
    local rec, now_due, figure = change(cur, kind, aud, re, ox, now)
    if rec ~= nil then
      store(KEYS[2], KEYS[3], KEYS[4], member, rec, now_due, figure, now)
      changed = changed + 1
    elseif figure ~= nil then
      redis.call('HINCRBY', KEYS[4], aud .. '|' .. figure, 1)
    end
  end
end
return changed
