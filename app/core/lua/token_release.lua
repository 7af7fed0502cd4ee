-- Deletes a lock or lease, only while it is still held by the caller's token: one that has
-- expired and been taken by another process is left alone.
-- KEYS[1]: the lock; ARGV[1]: the caller's token. Returns 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
