-- Renew one prospect's claim right before its request leaves, if the claim is still ours.
-- A batch waits for free connections, so a prospect's turn may come after its lease ran out
-- and another drain took it over; sending then would overwrite that drain's newer value with
-- a stale snapshot, and spend a permit twice.
-- KEYS[1] leases zset, KEYS[2] lease tokens hash
-- ARGV: pid, token, new lease end (ms)
-- Returns 1 when renewed, 0 when the claim is no longer ours.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
