-- Record the outcome of a claimed enrollment (or exit), if the claim is still ``token``'s
-- (a lease that ran out was taken over: this late outcome changes nothing, and the taker
-- looks it up). A change that arrived while it was sent is applied now.
-- KEYS[1] enrollment states, KEYS[2] enrollment due, KEYS[3] counts.
-- ARGV: token, now_ms, member, JSON outcome {st: final state | "retry", due (retry),
--       unk (retry: outcome unknown), tries (retry: attempts to count), why, id, count}.
-- Returns 1 when recorded, 0 when the claim was no longer ours.
local token, now, member = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local o = cjson.decode(ARGV[4])
local raw = redis.call('HGET', KEYS[1], member)
if not raw then return 0 end
local cur = cjson.decode(raw)
if cur.st ~= 'sending' or cur.tok ~= token then return 0 end
cur.tok = nil
if o.count then redis.call('HINCRBY', KEYS[3], cur.aud .. '|' .. o.count, 1) end
if o.st == 'retry' then
  if cur.op == 'exit' then cur.st = 'exiting' else cur.st = 'pending' end
  cur.unk = o.unk
  cur.n = (cur.n or 0) + (o.tries or 0)
  redis.call('HSET', KEYS[1], member, cjson.encode(cur))
  redis.call('ZADD', KEYS[2], tonumber(o.due), member)
  return 1
end
cur.st, cur.op, cur.unk, cur.at = o.st, nil, nil, now
if o.why then cur.why = o.why end
if o.id then cur.id = o.id end
local nx, nre, nox = cur.nx, cur.nre, cur.nox
cur.nx, cur.nre, cur.nox = nil, nil, nil
local rec, now_due, figure = cur, false, nil
if nx ~= nil then
  local r, d, f = change(cur, nx, cur.aud, nre, nox, now)
  if r ~= nil then rec, now_due = r, d end
  figure = f
end
store(KEYS[1], KEYS[2], KEYS[3], member, rec, now_due, figure, now)
return 1
