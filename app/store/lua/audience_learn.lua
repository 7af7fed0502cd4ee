-- Learn the audience -> mapping ID table a producer sends with its data, atomically, so two
-- API processes never hand one customN field to two audiences.
-- KEYS[1] audience -> N hash, KEYS[2] N -> audience hash, KEYS[3] audience -> issue JSON hash.
-- ARGV[1] now ms; ARGV[2] JSON {"p": [[audience, N], ...] in arrival order, "q": [audience, ...]}
-- (audiences named without a mapping ID: only their learned N is looked up).
-- Rules (docs/aep.md): an audience's first N is learned and kept; a later, different N for it
-- moves it there if that N is free (the old field is no longer written: "changed"); an N held
-- by another audience is refused ("conflict") and the holder keeps it.
-- Returns JSON {"v": [verdict per proposal], "t": {audience: N}} for every audience named;
-- a verdict is "same", "new", "changed:<old N>" or "conflict:<holder>".
local now = ARGV[1]
local req = cjson.decode(ARGV[2])
local verdicts, table_ = {}, {}
local function issue(audience, doc)
  local old = redis.call('HGET', KEYS[3], audience)
  local count = 1
  if old then
    local prev = cjson.decode(old)
    if prev.kind == doc.kind and prev.mapping_id == doc.mapping_id then count = prev.count + 1 end
  end
  doc.count = count
  doc.at_ms = tonumber(now)
  redis.call('HSET', KEYS[3], audience, cjson.encode(doc))
end
for i, pair in ipairs(req.p) do
  local audience, n = pair[1], tostring(pair[2])
  local held = redis.call('HGET', KEYS[1], audience)
  local holder = redis.call('HGET', KEYS[2], n)
  if held == n then
    verdicts[i] = 'same'
  elseif holder and holder ~= audience then
    verdicts[i] = 'conflict:' .. holder
    issue(audience, {kind = 'conflict', audience = audience, mapping_id = tonumber(n),
                     held_by = holder, current = held and tonumber(held) or cjson.null})
  else
    if held then
      redis.call('HDEL', KEYS[2], held)
      verdicts[i] = 'changed:' .. held
      issue(audience, {kind = 'changed', audience = audience, mapping_id = tonumber(n),
                       previous = tonumber(held)})
    else
      verdicts[i] = 'new'
    end
    redis.call('HSET', KEYS[1], audience, n)
    redis.call('HSET', KEYS[2], n, audience)
  end
  table_[audience] = true
end
for _, audience in ipairs(req.q) do table_[audience] = true end
local out = {}
for audience in pairs(table_) do
  local n = redis.call('HGET', KEYS[1], audience)
  if n then out[audience] = tonumber(n) end
end
-- cjson writes an empty table as {}: the caller reads {} as "no verdicts" or "no table".
return cjson.encode({v = verdicts, t = out})
