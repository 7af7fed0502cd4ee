-- Extend a claimed enrollment's lease just before its write goes out, if it is still
-- ``token``'s: a job that waited its turn past the lease must not be sent while another drain
-- (which took it over, as of unknown outcome) looks it up and sends it too.
-- KEYS[1] enrollment states, KEYS[2] enrollment due.
-- ARGV: member, token, until_ms. Returns 1 when renewed, 0 when no longer ours.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local cur = cjson.decode(raw)
if cur.st ~= 'sending' or cur.tok ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
return 1
