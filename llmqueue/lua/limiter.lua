-- Shared token buckets for one limit scope: requests and tokens, checked and taken together.
-- The clock is Redis TIME, so workers on machines with skewed clocks agree.
--
-- KEYS[1]  the scope's hash: r (request level), t (token level), ts (last refill), cool (cooldown end)
-- ARGV[1]  operation: "acquire" | "adjust" | "cooldown"
-- ARGV[2]  requests per minute (0 = unlimited)     ARGV[3] tokens per minute (0 = unlimited)
-- ARGV[4]  request capacity                        ARGV[5] token capacity
-- acquire:  ARGV[6] requests wanted, ARGV[7] tokens wanted, ARGV[8] longest wait the caller will reserve
--           returns {admitted (0|1), wait seconds as a string}. Admitted with a wait means the caller
--           holds a reservation and must sleep that long; not admitted means nothing was taken.
-- adjust:   ARGV[6] tokens to add back (negative: charge more); returns {1, "0"}
-- cooldown: ARGV[6] seconds every caller must pause; returns {1, seconds remaining as a string}

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local rcap, tcap = tonumber(ARGV[4]), tonumber(ARGV[5])

local h = redis.call('HMGET', KEYS[1], 'r', 't', 'ts', 'cool')
local r = tonumber(h[1]) or rcap
local tk = tonumber(h[2]) or tcap
local ts = tonumber(h[3]) or now
local cool = tonumber(h[4]) or 0

local elapsed = math.max(0, now - ts)
if rpm > 0 then r = math.min(rcap, r + elapsed * rpm / 60) end
if tpm > 0 then tk = math.min(tcap, tk + elapsed * tpm / 60) end

local admitted, result = 1, 0
if op == 'acquire' then
  local rcost, tcost, max_wait = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local wait = math.max(0, cool - now)
  -- A cost above capacity is admitted from a full bucket, and the debt slows those that follow.
  if rpm > 0 then
    local need = math.min(rcost, rcap)
    if r < need then wait = math.max(wait, (need - r) * 60 / rpm) end
  end
  if tpm > 0 then
    local need = math.min(tcost, tcap)
    if tk < need then wait = math.max(wait, (need - tk) * 60 / tpm) end
  end
  if wait <= max_wait then
    if rpm > 0 then r = r - rcost end
    if tpm > 0 then tk = tk - tcost end
  else
    admitted = 0
  end
  result = wait
elseif op == 'adjust' then
  if tpm > 0 then tk = math.min(tcap, tk + tonumber(ARGV[6])) end
elseif op == 'cooldown' then
  cool = math.max(cool, now + tonumber(ARGV[6]))
  result = cool - now
else
  return redis.error_reply('unknown limiter operation ' .. tostring(op))
end

redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(tk), 'ts', tostring(now), 'cool', tostring(cool))
redis.call('EXPIRE', KEYS[1], 3600 + math.ceil(math.max(0, cool - now)))
return {admitted, tostring(result)}
