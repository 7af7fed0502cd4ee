-- Record the intent to create an email's prospect, before the request (STYLE 17): refused
-- while another claim's create of it may still be under way (its lease not yet over).
-- KEYS[1] create intents hash, KEYS[2] email lease tokens hash.
-- ARGV: email, token, now_ms, lease_ms.
-- Returns 'go', 'busy' (another create may be under way), 'taken' (Outreach refused a create
-- of it as already taken, yet the lookup since found nothing: creating again cannot help)
-- or 'lost' (the claim is not ours).
local email, token, now, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HGET', KEYS[2], email) ~= token then return 'lost' end
local cur = redis.call('HGET', KEYS[1], email)
if cur then
  local rec = cjson.decode(cur)
  if rec.state == 'taken' then return 'taken' end
  if rec.state == 'sending' and rec.token ~= token and tonumber(rec.ms) + lease > now then
    return 'busy'
  end
end
redis.call('HSET', KEYS[1], email, cjson.encode({token = token, ms = tostring(now), state = 'sending'}))
return 'go'
