-- Takes the lease, or renews it when it is already ours.
-- KEYS[1]: the lease; ARGV[1]: the caller's token, ARGV[2]: its time to live (ms).
-- Returns 1 when the caller holds the lease, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
