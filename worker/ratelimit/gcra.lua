--[[ buttoncast's shared rate limiter: every check and the reservation in one atomic step.

One scope ("<workspace>:<endpoint>") = one budget shared by every worker on every machine.
Times are unix seconds on the Redis server's clock (TIME), so machines with skewed clocks agree;
ARGV[2] may carry a clock for tests ("" = TIME).

KEYS[1] <prefix>:tat      string  GCRA theoretical arrival time; expires when it passes
KEYS[2] <prefix>:vendor   hash    limit, remaining, reset_at, last_at (last slot granted in the window)
KEYS[3] <prefix>:blocked  hash    until, reason; expires at `until`
KEYS[4] <prefix>:windows  hash    vendor window index (floor(t / window)) -> slots granted in it
<prefix> is buttoncast:ratelimit:{<scope>}: one hash tag, so one Redis Cluster slot. The script
touches no key it is not handed in KEYS (the index of scopes is scopes.lua's, in another slot).

ARGV[1] op, ARGV[2] now or "", ARGV[3..4] the TTLs named below (from base.py), then per op:
  acquire  interval_s tolerance_s window_s window_limit guard_s max_wait_s   -> {granted 0|1, wait_s, reason}
  observe+acquire, observe+state: limit remaining reset_at, then that op's arguments: a vendor
           report a worker held back (redis.py, "deferred reports"), applied first, exactly as an
           observe call just before the op would be; one round trip instead of two
  observe  limit remaining reset_at ("" = missing header)
  block    until reason
  state    interval_s tolerance_s window_s window_limit guard_s   -> {next_free_at, now, limit, remaining, reset_at, blocked_until, blocked_reason}
  (numbers go out as strings: Redis would truncate a Lua number to an integer)

The rules (MemoryRateLimiter in memory.py mirrors them line for line):
- pacing: a slot at max(now, tat - tolerance); granting moves tat to max(tat, slot) + interval.
- vendor window (reset_at in the future, remaining known): remaining 0 means no slot before
  reset_at; otherwise, if spreading what is left evenly until reset_at is slower than our pacing,
  the next slot is last_at + (reset_at - last_at) / (remaining + 1). A slot granted inside the
  window decrements remaining.
- block: no slot before `until`.
- vendor windows (the assumption in base.py: fixed, aligned to the epoch): at most window_limit
  slots per window and none in its last guard_s seconds; a slot that would break either moves to
  the next window's start.
- the slot is the latest of these; granted only if slot - now <= max_wait_s, else nothing is
  written.
]]

if redis.replicate_commands then pcall(redis.replicate_commands) end  -- TIME before writes on Redis < 5

local VENDOR_GRACE_S = tonumber(ARGV[3])
local VENDOR_NO_RESET_TTL_S = tonumber(ARGV[4])

local op = ARGV[1]
local base = 5                 -- where the op's own arguments start
local folded = false           -- a held-back vendor report comes first (observe+<op>)
if string.sub(op, 1, 8) == 'observe+' then
  op = string.sub(op, 9)
  folded = true
  base = 8
end
local function arg(i) return ARGV[base + i - 1] end
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function num(value)
  if value == nil or value == false or value == '' then return nil end
  return tonumber(value)
end

local function fmt(value)
  if value == nil then return '' end
  return string.format('%.6f', value)
end

local function ttl_ms(seconds)
  return math.max(1, math.ceil(seconds * 1000))
end

local function load_vendor()
  local v = redis.call('HMGET', KEYS[2], 'limit', 'remaining', 'reset_at', 'last_at')
  return {limit = num(v[1]), remaining = num(v[2]), reset_at = num(v[3]), last_at = num(v[4])}
end

local function save_vendor(v)
  redis.call('DEL', KEYS[2])
  local fields = {}
  if v.limit ~= nil then table.insert(fields, 'limit'); table.insert(fields, string.format('%d', v.limit)) end
  if v.remaining ~= nil then table.insert(fields, 'remaining'); table.insert(fields, string.format('%d', v.remaining)) end
  if v.reset_at ~= nil then table.insert(fields, 'reset_at'); table.insert(fields, fmt(v.reset_at)) end
  if v.last_at ~= nil then table.insert(fields, 'last_at'); table.insert(fields, fmt(v.last_at)) end
  if #fields == 0 then return end
  redis.call('HSET', KEYS[2], unpack(fields))
  local ttl = VENDOR_NO_RESET_TTL_S
  if v.reset_at ~= nil then ttl = math.max(0, v.reset_at - now) + VENDOR_GRACE_S end
  redis.call('PEXPIRE', KEYS[2], ttl_ms(ttl))
end

local function window_open(v)
  return v.remaining ~= nil and v.reset_at ~= nil and v.reset_at > now
end

local function vendor_at(v, interval)
  if not window_open(v) then return now, false end
  if v.remaining <= 0 then return v.reset_at, true end
  if v.last_at ~= nil then
    local spread = (v.reset_at - v.last_at) / (v.remaining + 1)
    if spread > interval then return math.max(now, v.last_at + spread), false end
  end
  return now, false
end

local function load_block()
  local b = redis.call('HMGET', KEYS[3], 'until', 'reason')
  local until_ = num(b[1])
  if until_ ~= nil and until_ > now then return until_, b[2] end
  return nil, nil
end

-- The first time at or after `at` in a vendor window with a slot left and outside its guard.
local function fit_window(at, window, wlimit, guard)
  for _ = 1, 1000 do
    local k = math.floor(at / window)
    local start = k * window
    if at < start + window - guard then
      local n = tonumber(redis.call('HGET', KEYS[4], string.format('%d', k)) or '0')
      if n < wlimit then return at, k end
    end
    at = start + window
  end
  return at, math.floor(at / window)
end

local function count_window(k, at, window)
  local field = string.format('%d', k)
  if redis.call('HINCRBY', KEYS[4], field, 1) == 1 then
    -- a window's first slot: forget the windows that have ended (a handful: slots lie at most
    -- max_wait ahead)
    local current = math.floor(now / window)
    for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
      if tonumber(f) < current then redis.call('HDEL', KEYS[4], f) end
    end
  end
  local ttl = math.max((k + 1) * window - now, tonumber(redis.call('PTTL', KEYS[4])) / 1000)   -- to the window's end
  redis.call('PEXPIRE', KEYS[4], ttl_ms(ttl))
end

-- When the next slot could go and which constraint decides it.
local function earliest(interval, tolerance, window, wlimit, guard)
  local tat = num(redis.call('GET', KEYS[1])) or now
  local v = load_vendor()
  local at = math.max(now, tat - tolerance)
  local reason = 'paced'
  local v_at, exhausted = vendor_at(v, interval)
  if v_at > at then
    at = v_at
    if exhausted then reason = 'vendor_exhausted' else reason = 'paced' end
  end
  local blocked_until, blocked_reason = load_block()
  if blocked_until ~= nil and blocked_until >= at then at = blocked_until; reason = 'blocked' end
  local fitted, k = fit_window(at, window, wlimit, guard)
  if fitted > at then at = fitted end
  if at <= now then reason = 'ok' end
  return at, reason, tat, v, blocked_until, blocked_reason, k
end

local function observe(limit, remaining, reset_at)
  local v = load_vendor()
  if limit ~= nil then v.limit = limit end
  if reset_at ~= nil and (v.reset_at == nil or reset_at > v.reset_at) then
    v.reset_at = reset_at
    if remaining ~= nil then v.remaining = math.max(0, remaining) else v.remaining = nil end
    v.last_at = nil
  elseif remaining ~= nil and (reset_at == nil or reset_at == v.reset_at) then
    -- same window: responses arrive out of order, so a report can only lower the count
    if v.remaining == nil or remaining < v.remaining then v.remaining = math.max(0, remaining) end
  end
  -- else: a report from an older window says nothing about this one
  save_vendor(v)
end

if folded then observe(num(ARGV[5]), num(ARGV[6]), num(ARGV[7])) end

if op == 'acquire' then
  local interval, tolerance, window, wlimit, guard = tonumber(arg(1)), tonumber(arg(2)), tonumber(arg(3)), tonumber(arg(4)), tonumber(arg(5))
  local max_wait = tonumber(arg(6))
  -- A reservation never lies further ahead than max_wait + one interval (+ the burst), so a tat
  -- beyond that was set under a slower rate: after AWAL_RATE_LIMIT is raised it must not hold
  -- every worker back until the old rate's slot comes round.
  local stale = num(redis.call('GET', KEYS[1]))
  local horizon = now + math.max(0, max_wait) + interval + tolerance
  if stale ~= nil and stale > horizon then redis.call('SET', KEYS[1], fmt(horizon), 'PX', ttl_ms(horizon - now)) end
  local at, reason, tat, v, _, _, k = earliest(interval, tolerance, window, wlimit, guard)
  local wait = at - now
  if wait > math.max(0, max_wait) then return {0, fmt(wait), reason} end
  local new_tat = math.max(tat, at) + interval
  redis.call('SET', KEYS[1], fmt(new_tat), 'PX', ttl_ms(new_tat - now))
  count_window(k, at, window)
  if window_open(v) and at < v.reset_at and v.remaining > 0 then
    v.remaining = v.remaining - 1
    v.last_at = at
    save_vendor(v)
  end
  return {1, fmt(wait), reason}

elseif op == 'observe' then
  observe(num(arg(1)), num(arg(2)), num(arg(3)))
  return 1

elseif op == 'block' then
  local until_, reason = tonumber(arg(1)), arg(2)
  local current = num(redis.call('HGET', KEYS[3], 'until'))
  if until_ > now and (current == nil or until_ > current) then
    redis.call('HSET', KEYS[3], 'until', fmt(until_), 'reason', reason)
    redis.call('PEXPIRE', KEYS[3], ttl_ms(until_ - now))
  end
  return 1

elseif op == 'state' then
  local interval, tolerance, window, wlimit, guard = tonumber(arg(1)), tonumber(arg(2)), tonumber(arg(3)), tonumber(arg(4)), tonumber(arg(5))
  local at, _, _, v, blocked_until, blocked_reason = earliest(interval, tolerance, window, wlimit, guard)
  local limit, remaining = '', ''
  if v.limit ~= nil then limit = string.format('%d', v.limit) end
  if v.remaining ~= nil then remaining = string.format('%d', v.remaining) end
  return {fmt(at), fmt(now), limit, remaining, fmt(v.reset_at), fmt(blocked_until), blocked_reason or ''}
end

return redis.error_reply('unknown op ' .. tostring(op))
