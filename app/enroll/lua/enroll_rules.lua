-- Shared by note.lua and settle.lua (a prelude): how an enrollment's state changes when its
-- prospect enters or leaves the audience. A record is a table: st (pending | sending |
-- enrolled | already | refused | failed | exiting | left | cancelled | dry), op (enroll |
-- exit, while pending, exiting or sending), aud, n (attempts), unk (1: the last send's
-- outcome is unknown, so it is looked up first), nx/nre/nox (a change that arrived while it
-- was being sent, applied once that send is settled).
-- Each returns the changed record (nil: nothing changes), whether it is due now, and the
-- figure to count.
local function enter(cur, aud, re, now)
  if cur == nil or cur.st == 'cancelled' or cur.st == 'dry' or (cur.st == 'left' and re == 1) then
    return {st = 'pending', op = 'enroll', aud = aud, n = 0, at = now}, true, nil
  end
  if cur.st == 'exiting' then
    -- Back before the exit went out: still in the sequence, nothing to send.
    cur.st, cur.op = 'enrolled', nil
    return cur, false, nil
  end
  if cur.st == 'sending' then
    cur.nx, cur.nre = 'in', re
    return cur, false, nil
  end
  if cur.st == 'left' then return nil, false, 'reentry_skipped' end
  return nil, false, nil
end

local function leave(cur, ox, now)
  if cur == nil then return nil, false, nil end
  if cur.st == 'pending' then
    -- Never enroll after they left: the waiting enrollment is cancelled.
    cur.st, cur.op, cur.at = 'cancelled', nil, now
    return cur, false, 'cancelled'
  end
  if cur.st == 'sending' then
    cur.nx, cur.nox = 'out', ox
    return cur, false, nil
  end
  if cur.st == 'enrolled' or cur.st == 'already' then
    if ox == 'none' then
      cur.st, cur.at = 'left', now
      return cur, false, 'left'
    end
    cur.st, cur.op, cur.ox, cur.n, cur.unk, cur.at = 'exiting', 'exit', ox, 0, nil, now
    return cur, true, nil
  end
  return nil, false, nil
end

local function change(cur, kind, aud, re, ox, now)
  if kind == 'in' then return enter(cur, aud, re, now) end
  return leave(cur, ox, now)
end

-- Write a changed record: due now, or off the due set when nothing is left to send.
local function store(states, due, counts, member, rec, now_due, figure, now)
  if figure ~= nil then redis.call('HINCRBY', counts, rec.aud .. '|' .. figure, 1) end
  redis.call('HSET', states, member, cjson.encode(rec))
  if now_due then
    redis.call('ZADD', due, now, member)
  elseif rec.st ~= 'sending' and rec.st ~= 'pending' and rec.st ~= 'exiting' then
    redis.call('ZREM', due, member)
  end
end
