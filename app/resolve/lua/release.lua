-- End an email's claim without a prospect: "defer" puts it back due at due_ms (no permit, no
-- answer); "drop" removes the snapshot's fields (recorded as a failure by the caller first),
-- keeping any newer change that arrived meanwhile, which is resolved again at once.
-- KEYS[1] email due, KEYS[2] email leases, KEYS[3] email lease tokens, KEYS[4] email first
-- seen, KEYS[5] email pending, KEYS[6] email versions.
-- ARGV: email, token, mode, due_ms, then (field, version) * n of the snapshot ("drop").
-- Returns 1, or 0 when the claim is no longer the token's.
local email, token, mode, due = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', KEYS[3], email) ~= token then return 0 end
redis.call('ZREM', KEYS[2], email)
redis.call('HDEL', KEYS[3], email)
if mode == 'drop' then
  for j = 5, #ARGV, 2 do
    if redis.call('HGET', KEYS[6], ARGV[j]) == ARGV[j + 1] then
      redis.call('HDEL', KEYS[5], ARGV[j])
      redis.call('HDEL', KEYS[6], ARGV[j])
    end
  end
  if redis.call('EXISTS', KEYS[5]) == 0 then
    redis.call('HDEL', KEYS[4], email)
    redis.call('DEL', KEYS[6])
    return 1
  end
end
redis.call('ZADD', KEYS[1], due, email)
return 1
