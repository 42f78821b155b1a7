"""The Redis scripts of the policy: admission, settlement and deployment admission, each one atomic EVALSHA.

Rate windows are sliding one-minute logs, exact for every 60-second interval:

    {P}rl:{k|t|d}:{id}:z   sorted set, member "<ticket>:<tokens>", score = admission time (Redis TIME, ms)
    {P}rl:{k|t|d}:{id}:t   the sum of the tokens of the members (kept with the set, trimmed with it)

At admission every member older than 60 s leaves the set (its tokens leave the sum), then a request is admitted
only if `members + 1 <= rpm` and `sum + reservation <= tpm` for the key's and the team's windows together; the
reservation joins the set at once. Settlement swaps a member's reserved tokens for the real ones (keeping its
admission time), so the sum over any 60-second interval of what was admitted never exceeds the limit while the
reservation bounds the real usage (the prompt is counted and `max_tokens` caps the completion). All replicas
share one clock (Redis TIME) and one script runs at a time, so the bound holds however many gateways run.

Budgets are integer nano-dollar counters per period, `{P}spend:{k|t}:{id}:{d<YYYYMMDD>|m<YYYYMM>}`, charged with
the reservation's upper-bound cost at admission and corrected to the real cost at settlement.

The scripts build key names from a prefix (the team is only known after reading the key), so they need a
standalone Redis (or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

_PRELUDE = r"""
local P = ARGV[1]
local WIN = 60000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function tokens_of(member)
  return tonumber(string.sub(member, string.find(member, ':', 1, true) + 1))
end

-- Drops members that left the window; returns the window's request count and token sum.
local function trim(base)
  local z = base .. ':z'
  local cut = now - WIN
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cut)
  local sum = tonumber(redis.call('GET', base .. ':t') or '0')
  if #old > 0 then
    local freed = 0
    for i = 1, #old do freed = freed + tokens_of(old[i]) end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cut)
    sum = sum - freed
    redis.call('DECRBY', base .. ':t', freed)
  end
  local n = redis.call('ZCARD', z)
  if n == 0 and sum ~= 0 then
    redis.call('DEL', base .. ':t')
    sum = 0
  end
  return n, sum
end

-- Milliseconds until the n-th oldest member leaves the window.
local function nth_expiry(base, n)
  local e = redis.call('ZRANGE', base .. ':z', n - 1, n - 1, 'WITHSCORES')
  if #e == 0 then return 0 end
  return tonumber(e[2]) + WIN - now
end

-- Milliseconds until members holding at least `need` tokens have left the window.
local function token_expiry(base, need)
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', base .. ':z', start, start + 255, 'WITHSCORES')
    if #page == 0 then return WIN end
    for i = 1, #page, 2 do
      freed = freed + tokens_of(page[i])
      if freed >= need then return tonumber(page[i + 1]) + WIN - now end
    end
    start = start + 256
  end
end

local function reserve(base, tid, tokens)
  redis.call('ZADD', base .. ':z', now, tid .. ':' .. tokens)
  redis.call('INCRBY', base .. ':t', tokens)
  redis.call('PEXPIRE', base .. ':z', WIN + 5000)
  redis.call('PEXPIRE', base .. ':t', WIN + 5000)
end

local function num(v)
  return tonumber(v or '0') or 0
end

local function int(x)
  return string.format('%.0f', x)
end

local function period_ttl(id)
  if string.sub(id, 1, 1) == 'd' then return 3 * 86400 end
  return 62 * 86400
end
"""

ADMIT = _PRELUDE + r"""
-- ARGV: 1 prefix, 2 key sha256, 3 model ids that permit the requested model (csv), 4 reserved tokens,
--       5 reserved cost (nano-USD), 6 ticket id, 7 day YYYYMMDD, 8 month YYYYMM, 9 cacheable (0/1),
--       10 requested model (ledger of refusals), 11 usage retention (s)
local kid = redis.call('GET', P .. 'key:' .. ARGV[2])
if not kid then return 'unknown' end
local k = redis.call('HMGET', P .. 'keyinfo:' .. kid, 'team', 'revoked', 'models', 'rpm', 'tpm', 'budget_nusd',
                     'period', 'admin')
if not k[1] then return 'unknown' end
local team, models, admin = k[1], k[3] or '', k[8] or '0'
if k[2] == '1' then return table.concat({'revoked', kid, team, admin, models}, '|') end
if models ~= '' then
  local list, ok = ',' .. models .. ',', false
  for id in string.gmatch(ARGV[3], '[^,]+') do
    if string.find(list, ',' .. id .. ',', 1, true) then ok = true break end
  end
  if not ok then return table.concat({'model_not_allowed', kid, team, admin, models}, '|') end
end
local tm = redis.call('HMGET', P .. 'teaminfo:' .. team, 'rpm', 'tpm', 'budget_nusd', 'period')
local est, cost, tid = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

local scopes = {}
local function scope(name, base, rpm, tpm, bit)
  rpm, tpm = num(rpm), num(tpm)
  if rpm <= 0 and tpm <= 0 then return end
  local n, sum = trim(base)
  scopes[#scopes + 1] = {name = name, base = base, rpm = rpm, tpm = tpm, n = n, t = sum, bit = bit}
end
scope('key', P .. 'rl:k:' .. kid, k[4], k[5], 1)
scope('team', P .. 'rl:t:' .. team, tm[1], tm[2], 2)
local limited = #scopes > 0 and '1' or '0'

local function pid(period)
  if period == 'day' then return 'd' .. ARGV[7] end
  return 'm' .. ARGV[8]
end
local kper, tper = pid(k[7]), pid(tm[4])
local kspend, tspend = P .. 'spend:k:' .. kid .. ':' .. kper, P .. 'spend:t:' .. team .. ':' .. tper
local ks, ts = num(redis.call('GET', kspend)), num(redis.call('GET', tspend))
local kb, tb = num(k[6]), num(tm[3])
local budgeted = (kb > 0 or tb > 0) and '1' or '0'

local too_large, deny_rpm, deny_tok, deny_budget, retry = nil, nil, nil, nil, 0
for _, s in ipairs(scopes) do
  if s.tpm > 0 and est > s.tpm then too_large = too_large or s end
  if s.rpm > 0 and s.n + 1 > s.rpm then
    deny_rpm = deny_rpm or s
    retry = math.max(retry, nth_expiry(s.base, s.n + 1 - s.rpm))
  end
  if s.tpm > 0 and est <= s.tpm and s.t + est > s.tpm then
    deny_tok = deny_tok or s
    retry = math.max(retry, token_expiry(s.base, s.t + est - s.tpm))
  end
end
local bud_period = ''
if kb > 0 and (ks + cost > kb or ks >= kb) then deny_budget, bud_period = 'key', kper end
if deny_budget == nil and tb > 0 and (ts + cost > tb or ts >= tb) then deny_budget, bud_period = 'team', tper end

local status, reason = 'ok', ''
if too_large then
  status, reason = 'too_large', too_large.name .. ':' .. int(too_large.tpm)
elseif deny_rpm then
  status, reason = 'rpm', deny_rpm.name
elseif deny_budget or deny_tok then
  if deny_budget then reason = 'budget:' .. deny_budget else reason = 'tpm:' .. deny_tok.name end
  if ARGV[9] == '1' then status = 'cache_only' else status = string.sub(reason, 1, string.find(reason, ':') - 1) end
end

local mask, tok, charged = 0, 0, 0
if status == 'ok' or status == 'cache_only' then
  if status == 'ok' then tok, charged = est, cost end
  for _, s in ipairs(scopes) do
    reserve(s.base, tid, tok)
    mask = mask + s.bit
  end
  if charged > 0 then
    redis.call('INCRBY', kspend, charged)
    redis.call('EXPIRE', kspend, period_ttl(kper))
    redis.call('INCRBY', tspend, charged)
    redis.call('EXPIRE', tspend, period_ttl(tper))
  end
else
  local usage = P .. 'usage:' .. ARGV[7]
  redis.call('HINCRBY', usage, team .. '|' .. kid .. '|' .. ARGV[10] .. '|rejected', 1)
  redis.call('EXPIRE', usage, tonumber(ARGV[11]))
end

-- Header values: the tighter of the key's and the team's windows, after this request's reservation.
local function dim(field, used_field, add)
  local best = nil
  for _, s in ipairs(scopes) do
    local lim = s[field]
    if lim > 0 then
      local used = s[used_field]
      if mask > 0 then used = used + add end
      if best == nil or lim - used < best[2] then best = {lim, lim - used, s.base} end
    end
  end
  if best == nil then return 0, 0, 0 end
  return best[1], best[2], nth_expiry(best[3], 1)
end
local rl, rr, rreset = dim('rpm', 'n', 1)
local tl, tr, treset = dim('tpm', 't', tok)
local bl, br = 0, 0
for _, b in ipairs({{kb, ks}, {tb, ts}}) do
  if b[1] > 0 and (bl == 0 or b[1] - b[2] - charged < br) then bl, br = b[1], b[1] - b[2] - charged end
end
-- One bulk string (fields joined by '|'; ids, teams and model ids never contain one): cheaper to parse.
return table.concat({status, kid, team, admin, models, reason, int(mask), int(rl), int(rr), int(rreset), int(tl),
                     int(tr), int(treset), int(retry), int(bl), int(br), kper, tper, limited, budgeted, bud_period},
                    '|')
"""

SETTLE = _PRELUDE + r"""
-- ARGV: 1 prefix, 2 key id, 3 team, 4 ticket id, 5 window mask (1 key, 2 team), 6 reserved tokens,
--       7 real tokens (-1: release the request from the windows), 8 reserved cost, 9 real cost,
--       10 key spend period id, 11 team spend period id ('' = the team's own period), 12 day YYYYMMDD,
--       13 month YYYYMM, 14 ledger field prefix "team|key|model|", 15 event JSON, 16 events kept,
--       17 usage retention (s), 18 deployment window holding a reservation (''), 19 deployment window of the
--       model that answered (''), then name/value pairs added to the day's aggregates
local kid, team, tid = ARGV[2], ARGV[3], ARGV[4]
local mask, reserved, real = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

local function adjust(base, actual)
  local z = base .. ':z'
  local old = tid .. ':' .. reserved
  local score = redis.call('ZSCORE', z, old)
  if not score then return end
  redis.call('ZREM', z, old)
  local delta = -reserved
  if actual >= 0 then
    redis.call('ZADD', z, score, tid .. ':' .. actual)
    delta = actual - reserved
  end
  if delta ~= 0 then redis.call('INCRBY', base .. ':t', delta) end
end

if mask % 2 == 1 then adjust(P .. 'rl:k:' .. kid, real) end
if mask >= 2 then adjust(P .. 'rl:t:' .. team, real) end
local dres, dact = ARGV[18], ARGV[19]
if dres ~= '' and dres == dact then
  adjust(dres, real)
else
  if dres ~= '' then adjust(dres, -1) end
  if dact ~= '' and real > 0 then reserve(dact, tid, real) end
end

local delta = tonumber(ARGV[9]) - tonumber(ARGV[8])
if delta ~= 0 then
  local kper, tper = ARGV[10], ARGV[11]
  if tper == '' then
    local p = redis.call('HGET', P .. 'teaminfo:' .. team, 'period')
    if p == 'day' then tper = 'd' .. ARGV[12] else tper = 'm' .. ARGV[13] end
  end
  local kspend, tspend = P .. 'spend:k:' .. kid .. ':' .. kper, P .. 'spend:t:' .. team .. ':' .. tper
  redis.call('INCRBY', kspend, delta)
  redis.call('EXPIRE', kspend, period_ttl(kper))
  redis.call('INCRBY', tspend, delta)
  redis.call('EXPIRE', tspend, period_ttl(tper))
end

local usage = P .. 'usage:' .. ARGV[12]
for i = 20, #ARGV, 2 do
  redis.call('HINCRBY', usage, ARGV[14] .. ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', usage, tonumber(ARGV[17]))
if ARGV[15] ~= '' then
  redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', ARGV[16], '*', 'e', ARGV[15])
end
return 1
"""

DEPLOY = _PRELUDE + r"""
-- ARGV: 1 prefix, 2 ticket id, 3 reserved tokens, then (model, rpm, tpm) per plan target in order.
-- Reserves on the first deployment with room; returns {index (1-based), reserved 0/1} or {0, retry ms}.
local tid, est = ARGV[2], tonumber(ARGV[3])
local retry = nil
for i = 4, #ARGV, 3 do
  local rpm, tpm = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local index = (i - 1) / 3
  if rpm <= 0 and tpm <= 0 then return {index, 0} end
  local base = P .. 'rl:d:' .. ARGV[i]
  local n, sum = trim(base)
  local wait = 0
  if rpm > 0 and n + 1 > rpm then wait = math.max(wait, nth_expiry(base, n + 1 - rpm)) end
  if tpm > 0 and sum + est > tpm then
    if est > tpm then wait = WIN else wait = math.max(wait, token_expiry(base, sum + est - tpm)) end
  end
  if wait == 0 then
    reserve(base, tid, est)
    return {index, 1}
  end
  if retry == nil or wait < retry then retry = wait end
end
return {0, retry or WIN}
"""
