-- Shared token buckets for one limit scope: requests and tokens, checked and taken together.
-- The clock is Redis TIME, so workers on machines with skewed clocks agree.
--
-- KEYS[1]  the scope's hash: r/rts (request level and when it was last refilled), t/tts (the same for
--          tokens), cool (when the scope's cooldown ends). A bucket's fields are written only by calls
--          that carry its rate, so a caller without a limit never disturbs the buckets.
-- ARGV[1]  operation: "acquire" | "adjust" | "cooldown"
-- ARGV[2]  requests per minute (0 = unlimited)     ARGV[3] tokens per minute (0 = unlimited)
-- ARGV[4]  request capacity                        ARGV[5] token capacity
-- acquire:  ARGV[6] requests wanted, ARGV[7] tokens wanted, ARGV[8] longest wait the caller will reserve
--           returns {admitted (0|1), wait seconds as a string}. Admitted with a wait means the caller
--           holds a reservation and must sleep that long; not admitted means nothing was taken.
-- adjust:   ARGV[6] tokens to add back (negative: charge more); returns {1, "0"}
-- cooldown: ARGV[6] seconds every caller must pause (0: only ask what is left), ARGV[7] the longest pause
--           (0: no escalation); returns {1, seconds remaining as a string}. A 429 that comes soon after
--           the last pause ended doubles the pause (up to ARGV[7]): the provider is still refusing.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local rcap, tcap = tonumber(ARGV[4]), tonumber(ARGV[5])
local key = KEYS[1]

local h = redis.call('HMGET', key, 'r', 'rts', 't', 'tts', 'cool', 'streak', 'pause')
local cool = tonumber(h[5]) or 0

-- A bucket's level at time `at`: refilled since its last write, never above capacity.
local function level(value, stamp, rate, cap, at)
  local lvl = tonumber(value) or cap
  local since = tonumber(stamp) or at
  return math.min(cap, lvl + math.max(0, at - since) * rate / 60)
end

local function keep_alive()
  redis.call('EXPIRE', key, 3600 + math.ceil(math.max(0, cool - now)))
end

if op == 'cooldown' then
  local seconds, longest = tonumber(ARGV[6]), tonumber(ARGV[7]) or 0
  if seconds > 0 then
    local streak, last = tonumber(h[6]) or 0, tonumber(h[7]) or 0
    local pause = seconds
    if now < cool then
      -- Another answer from the same episode (a call sent before the pause began).
    else
      if longest > 0 and now - cool < math.max(2, 2 * last) then streak = streak + 1 else streak = 0 end
      if longest > 0 then pause = math.min(longest, math.max(seconds, seconds * 2 ^ streak)) end
    end
    cool = math.max(cool, now + pause)
    redis.call('HSET', key, 'cool', tostring(cool), 'streak', streak, 'pause', tostring(pause))
    keep_alive()
  end
  return {1, tostring(math.max(0, cool - now))}
end

if op == 'adjust' then
  if tpm > 0 then
    local stamp = math.max(now, tonumber(h[4]) or now)
    local tk = math.min(tcap, level(h[3], h[4], tpm, tcap, stamp) + tonumber(ARGV[6]))
    redis.call('HSET', key, 't', tostring(tk), 'tts', tostring(stamp))
    keep_alive()
  end
  return {1, '0'}
end

if op ~= 'acquire' then
  return redis.error_reply('unknown limiter operation ' .. tostring(op))
end

local rcost, tcost, max_wait = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
-- During a cooldown the buckets are judged as of its end, so callers queued behind it leave it
-- spaced at the limit's rate instead of all at once.
local at = math.max(now, cool)
local bucket_wait = 0
local r, tk
if rpm > 0 then
  r = level(h[1], h[2], rpm, rcap, at)
  -- A cost above capacity is admitted from a full bucket, and the debt slows those that follow.
  local need = math.min(rcost, rcap)
  if r < need then bucket_wait = math.max(bucket_wait, (need - r) * 60 / rpm) end
end
if tpm > 0 then
  tk = level(h[3], h[4], tpm, tcap, at)
  local need = math.min(tcost, tcap)
  if tk < need then bucket_wait = math.max(bucket_wait, (need - tk) * 60 / tpm) end
end
local wait = (at - now) + bucket_wait
if wait > max_wait then
  return {0, tostring(wait)}
end
if rpm > 0 then redis.call('HSET', key, 'r', tostring(r - rcost), 'rts', tostring(at)) end
if tpm > 0 then redis.call('HSET', key, 't', tostring(tk - tcost), 'tts', tostring(at)) end
if rpm > 0 or tpm > 0 then keep_alive() end
return {1, tostring(wait)}
