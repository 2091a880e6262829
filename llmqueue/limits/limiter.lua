-- Shared token buckets for one limit scope: requests and tokens (and, where the provider limits them
-- apart, input and output tokens), checked and taken together, with the limits the provider states in its
-- headers learnt here for every worker. The clock is Redis TIME.
--
-- KEYS[1]  the scope's hash:
--   r/rts, t/tts   request and token levels and when they were last written; i/its, o/ots the input
--                  and output token levels (Anthropic's ITPM/OTPM)
--   cool, streak, pause   the 429 cooldown
--   lrpm, ltpm, litpm, lotpm   limits learnt from the provider's headers (per minute); lset: when what
--                  they made of the scope's limits last changed; hdr: 'yes' once headers were
--                  seen, 'none' after a response without any (the scope is then unlimited)
--   ta/tb          decaying sums whose ratio a/b is the token charge factor: what the provider counts
--                  per token we estimate (>= 1; a provider counting tokens its own way)
--   rshare         the share of the request rate another client on the key takes (-SHARE_CREDIT to
--                  MAX_SHARE; below 0 it counts as 0): the request bucket refills at
--                  rpm * (1 - max(0, rshare)); rspan/rbase/rpend: when the request
--                  bucket's last learning sample was taken, the gap left uncorrected (provider above us),
--                  and the net drift seen since that sample
--   rgc/tgc, rgr/tgr   cumulative units granted, charged and as estimated; tsc/tsr: the token ones at
--                  the last learning sample; rc/tc/ic/oc: cumulative corrections from headers
--   probe, probe_ts    grants made while probing a scope with no limit yet
--   crpm, ctpm, citpm, cotpm, cburst   the configured limit the last limited acquire carried (inspect)
--   w0..w9         until when a refused job of that priority expects to come back
--   n0..n11 / e0..e11 with ns*/es*: grants and 429s in each 5 s slot of the last minute
--
-- ARGV[1] operation: acquire | adjust | cooldown | observe | inspect
-- ARGV[2..8] the configured limit (its shape): requests/min, tokens/min, input tokens/min, output
--         tokens/min (0: none), burst seconds (bucket capacity in seconds of the rate), reserve (fraction
--         of capacity jobs below the default priority may not take), spread (seconds of the rate every
--         admission leaves in the bucket)
-- The operation's own arguments follow from ARGV[9]; below, A[n] is ARGV[8 + n].
-- acquire:  A[1] requests, A[2] tokens, A[3] longest wait the caller will reserve, A[4] priority (0-9),
--           A[5] longest reservation a low-priority job may hold (seconds), A[6] input tokens, A[7] output
--           tokens. Returns {admitted, wait, state, rcharged, tcharged, rbelief, tbelief, rc, tc, rgc, tgc,
--           rgr, tgr, now, icharged, ocharged, ibelief, obelief, ic, oc, chosen} (refusals and unlimited
--           scopes fill the numbers with '0'). With several KEYS (deployments of one model: candidate 1's
--           shape in ARGV[2..8], the others' seven values each from A[8]) the one that can admit soonest
--           is chosen, and `chosen` is its position in KEYS (1-based); with one key it is 1.
--           Admitted with a wait: the caller holds a reservation and sleeps that long. Not admitted:
--           nothing was taken and wait says when to come back. state: limited | probing | unlimited.
-- adjust:   A[1] charged tokens to add back (negative: charge more), A[2] the same as estimated,
--           A[3..4] the same for requests, A[5] input and A[6] output tokens to add back (all optional)
-- cooldown: A[1] seconds every caller must pause (0: only ask what is left), A[2] the longest pause
--           (0: no escalation); returns {1, seconds remaining, time of the last 429, now}. A 429 soon
--           after the last pause ended doubles the pause (up to A[2]): the provider is still refusing.
--           A[3] '0': the pause is not a 429 (a deployment taken out by the circuit breaker): not counted
--           or dated as one.
-- observe:  A[1] limit-requests, A[2] limit-tokens (0: not sent), A[3] remaining-requests, A[4]
--           remaining-tokens (-1: not sent), A[5..12] the ticket of the call (rbelief, tbelief, rc, tc,
--           rgc, tgc, rgr, tgr; rbelief -1e300: no ticket), A[13] 1 when the call was refused (429),
--           A[14..15] the requests and tokens it was charged; A[16..17] limit-input-tokens and
--           limit-output-tokens, A[18..19] their remaining, A[20..23] the ticket's ibelief, obelief, ic,
--           oc, A[24..25] the input and output tokens it was charged, A[26] when it was granted (Redis
--           time; 0: no ticket). Returns {lrpm, ltpm, litpm, lotpm}.
-- inspect:  returns the scope's state (see limiter.py, ScopeState).

local PROBE_REQUESTS, PROBE_WINDOW, PROBE_RETRY = 2, 5, 0.2
-- Another client takes a rate, not a share of every call: learnt as a slower refill of the request
-- bucket, so a full bucket still holds a full burst, as the provider's does.
local MAX_SHARE, SHARE_SECONDS = 0.75, 10
-- Seconds over which a lowering of the request bucket may be given back by a surplus (about a call's
-- time in flight, and the delays of a busy machine).
local OWED_SECONDS = 1
-- With no other client, shortfalls and surpluses from calls arriving unevenly come and go in equal
-- measure. A share held at 0 would keep every shortfall and drop every surplus, and so drift up to a
-- share nobody takes; it may go this far below 0 instead, where the two cancel out.
local SHARE_CREDIT = 0.05
local MAX_FACTOR, LEARN_SECONDS, TOLERANCE, REORDER_SECONDS, GRACE, SLOT, SLOTS = 4, 2, 0.5, 0.1, 0.2, 5, 12
local DEFAULT_PRIORITY, MAX_PRIORITY, REFUSAL_STEP = 1, 9, 0.1
-- Calls admitted at the rate reach the provider a little unevenly (event loop, request building, the
-- network): a bucket run down to empty at both ends would see that unevenness as 429s. Every admission
-- leaves `spread` seconds of the rate in the bucket (at most SPREAD_SHARE of it), so the provider's
-- bucket keeps that slack; the rate, and so the throughput, stays the provider's.
local SPREAD_SHARE = 0.25
local NO_TICKET = -1e300
local unpack = unpack or table.unpack

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local SHAPE, OP_ARGS = 7, 8
local A = {}
for n = OP_ARGS + 1, #ARGV do A[n - OP_ARGS] = ARGV[n] end
local cfg_rpm, cfg_tpm, cfg_itpm, cfg_otpm, burst, reserve, spread
local key = KEYS[1]

local FIELDS = {'r', 'rts', 't', 'tts', 'cool', 'streak', 'pause', 'lrpm', 'ltpm', 'hdr',
  'rshare', 'rspan', 'rbase', 'rpend', 'ta', 'tb', 'rgc', 'tgc', 'rgr', 'tgr', 'tsc', 'tsr', 'rc', 'tc',
  'probe', 'probe_ts', 'crpm', 'ctpm', 'cburst', 'refused_at',
  'i', 'its', 'o', 'ots', 'litpm', 'lotpm', 'ic', 'oc', 'citpm', 'cotpm', 'lset', 'rowed', 'rowed_ts'}
for p = 0, MAX_PRIORITY do FIELDS[#FIELDS + 1] = 'w' .. p end
local h, updates, cool = {}, {}, 0
local function num(name, default) return tonumber(h[name]) or default end
local function set(name, value) h[name] = tostring(value); updates[#updates + 1] = name; updates[#updates + 1] = tostring(value) end

local function combine(configured, learnt)
  if configured > 0 and learnt > 0 then return math.min(configured, learnt) end
  if configured > 0 then return configured end
  return learnt
end
-- The share of the request rate another client takes, as the request bucket's refill uses it.
local function others_share()
  return math.min(MAX_SHARE, math.max(0, num('rshare', 0)))
end

local rpm, tpm, itpm, otpm, rcap, tcap, icap, ocap, rrate
local function shape()
  rpm = combine(cfg_rpm, num('lrpm', 0))
  tpm = combine(cfg_tpm, num('ltpm', 0))
  itpm = combine(cfg_itpm, num('litpm', 0))
  otpm = combine(cfg_otpm, num('lotpm', 0))
  -- The request bucket's refill: the rate, less what another client on the key was seen to take.
  rrate = rpm * (1 - others_share())
  rcap = math.max(1, rpm * burst / 60)
  tcap = math.max(1, tpm * burst / 60)
  icap = math.max(1, itpm * burst / 60)
  ocap = math.max(1, otpm * burst / 60)
end

-- Make candidate i (KEYS[i]) the scope every function below works on: its limit and its hash.
-- Candidate 1's shape is ARGV[2..8]; with several KEYS (acquire over deployments) candidate i >= 2's
-- is the seven values from A[8 + SHAPE * (i - 2)].
local function load(i)
  local base = i == 1 and 2 or OP_ARGS + 8 + SHAPE * (i - 2)
  key = KEYS[i]
  cfg_rpm, cfg_tpm = tonumber(ARGV[base]), tonumber(ARGV[base + 1])
  cfg_itpm, cfg_otpm = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  burst, reserve = tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  spread = tonumber(ARGV[base + 6])
  local values = redis.call('HMGET', key, unpack(FIELDS))
  h, updates = {}, {}
  for j, name in ipairs(FIELDS) do h[name] = values[j] end
  cool = num('cool', 0)
  shape()
end
load(1)

-- A bucket's level at time `at`: refilled since its last write, never above capacity.
local function level(b, rate, cap, at)
  local lvl = tonumber(h[b]) or cap
  local since = tonumber(h[b .. 'ts']) or at
  return math.min(cap, lvl + math.max(0, at - since) * rate / 60)
end

-- The token charge factor (a request is one request to every provider: requests have none).
local function token_factor()
  local a, d = num('ta', 0), num('tb', 0)
  if d <= 0 then return 1 end
  return math.min(MAX_FACTOR, math.max(1, a / d))
end

local function count(kind, n)
  local slot = math.floor(now / SLOT)
  local i = slot % SLOTS
  local stamp = redis.call('HGET', key, kind .. 's' .. i)
  if tonumber(stamp) == slot then
    redis.call('HINCRBY', key, kind .. i, n)
  else
    redis.call('HSET', key, kind .. i, n, kind .. 's' .. i, slot)
  end
end

local function last_minute(kind)
  local slot = math.floor(now / SLOT)
  local total = 0
  for i = 0, SLOTS - 1 do
    local got = redis.call('HMGET', key, kind .. i, kind .. 's' .. i)
    local s = tonumber(got[2])
    if s and slot - s < SLOTS then total = total + (tonumber(got[1]) or 0) end
  end
  return total
end

local function save()
  if #updates > 0 then redis.call('HSET', key, unpack(updates)) end
  redis.call('EXPIRE', key, 3600 + math.ceil(math.max(0, cool - now)))
end

local function state()
  if rpm > 0 or tpm > 0 or itpm > 0 or otpm > 0 then return 'limited' end
  if h.hdr == 'none' then return 'unlimited' end
  return 'probing'
end

if op == 'cooldown' then
  local seconds, longest = tonumber(A[1]), tonumber(A[2]) or 0
  if seconds > 0 then
    local streak, last = num('streak', 0), num('pause', 0)
    local pause = seconds
    if now < cool then
      -- Another answer from the same episode (a call sent before the pause began).
    else
      if longest > 0 and now - cool < math.max(2, 2 * last) then streak = streak + 1 else streak = 0 end
      if longest > 0 then pause = math.min(longest, math.max(seconds, seconds * 2 ^ streak)) end
    end
    cool = math.max(cool, now + pause)
    set('cool', cool); set('streak', streak); set('pause', pause)
    if A[3] ~= '0' then set('refused_at', now); count('e', 1) end
    save()
  end
  -- A 429 voids earlier reservations only where it changed how calls are charged (headers were read).
  local refused_at = (h.hdr == 'yes') and num('refused_at', 0) or 0
  return {1, tostring(math.max(0, cool - now)), tostring(refused_at), tostring(now)}
end

if op == 'adjust' then
  local back = {{'t', tpm, tcap, tonumber(A[1]), tonumber(A[2])},
    {'r', rrate, rcap, tonumber(A[3]) or 0, tonumber(A[4]) or 0},
    {'i', itpm, icap, tonumber(A[5]) or 0}, {'o', otpm, ocap, tonumber(A[6]) or 0}}
  for _, item in ipairs(back) do
    local b, rate, cap, charged, raw = item[1], item[2], item[3], item[4], item[5]
    if rate > 0 and charged ~= 0 then
      local stamp = math.max(now, num(b .. 'ts', now))
      local was = level(b, rate, cap, stamp)
      local now_at = math.min(cap, was + charged)
      set(b, now_at)
      set(b .. 'ts', stamp)
      if raw then
        set(b .. 'gc', num(b .. 'gc', 0) - charged)
        set(b .. 'gr', num(b .. 'gr', 0) - raw)
      else
        -- Input and output are reconciled with the provider's own count: answers to calls granted
        -- before this see the change at the provider too, and net it out as a correction.
        set(b .. 'c', num(b .. 'c', 0) - (now_at - was))
      end
    end
  end
  if #updates > 0 then save() end
  return {1, '0'}
end

if op == 'observe' then
  -- The reply: the limits the provider has stated (0 where it never stated one).
  local function learnt()
    return {tostring(num('lrpm', 0)), tostring(num('ltpm', 0)), tostring(num('litpm', 0)), tostring(num('lotpm', 0))}
  end
  local said_rpm, said_tpm = tonumber(A[1]), tonumber(A[2])
  local said_itpm, said_otpm = tonumber(A[16]) or 0, tonumber(A[17]) or 0
  local before = {rpm, tpm, itpm, otpm}
  if said_rpm > 0 or said_tpm > 0 or said_itpm > 0 or said_otpm > 0 then
    if said_rpm > 0 then set('lrpm', said_rpm) end
    if said_tpm > 0 then set('ltpm', said_tpm) end
    if said_itpm > 0 then set('litpm', said_itpm) end
    if said_otpm > 0 then set('lotpm', said_otpm) end
    set('hdr', 'yes')
    shape()
  elseif h.hdr ~= 'yes' then
    -- A successful answer that states no limit: the provider does not say, the scope stays unlimited.
    set('hdr', 'none')
  end
  if rpm ~= before[1] or tpm ~= before[2] or itpm ~= before[3] or otpm ~= before[4] then set('lset', now) end
  local ticket = {}
  for i = 5, 12 do ticket[#ticket + 1] = tonumber(A[i]) end
  -- A refused call (429) took nothing at the provider: compare with what the bucket held before it.
  local refused = tonumber(A[13]) or 0
  -- What the provider had left after the ticket's call against what bucket b believed then, net of the
  -- corrections made since; negative: the provider had less. Calls in flight together reach the
  -- provider in any order, so a gap within the tolerance (what arrives within REORDER_SECONDS) is no
  -- evidence either way. (At a saturated key both sides read 0: only 429s tell.)
  local function gap_of(b, rate, cap, left, belief, charged, corr_at, whole)
    if refused == 1 then belief = belief + charged end
    -- A bucket the provider's stated limit just made smaller holds no more than its new capacity.
    belief = math.min(belief, cap)
    if whole then belief = math.floor(belief + 1e-9) end
    return (left - belief) + (num(b .. 'c', 0) - corr_at), math.max(TOLERANCE, rate * REORDER_SECONDS / 60)
  end
  -- Lower bucket b (refilling at rate) by a negative gap at once, counted so later answers net it out.
  local function lower_by(b, rate, cap, gap)
    local stamp = math.max(now, num(b .. 'ts', now))
    set(b, math.min(cap, level(b, rate, cap, stamp) + gap)); set(b .. 'ts', stamp)
    set(b .. 'c', num(b .. 'c', 0) - gap)
  end
  -- The first answer seen for bucket b: it starts from what the provider says is left.
  local function first_sight(b, cap, left)
    set(b, math.min(cap, left)); set(b .. 'ts', now)
    if b == 't' then set('tsc', num('tgc', 0)); set('tsr', num('tgr', 0)) end
    if b == 'r' then set('rspan', now); set('rbase', 0) end
  end
  -- The token bucket: a shortfall that goes on is the provider counting tokens its own way, learnt as
  -- the charge factor over the tokens granted and estimated since the last sample (gc/gr from the ticket).
  local function correct_tokens(left, belief, charged, corr_at, gc_at, gr_at)
    if tpm <= 0 or left < 0 then return end
    if not h.t then first_sight('t', tcap, left); return end
    if belief <= NO_TICKET then return end
    local gap, tolerance = gap_of('t', tpm, tcap, left, belief, charged, corr_at, false)
    -- Within it nothing is learnt either: the span and its gap carry on to the next answer.
    if math.abs(gap) <= tolerance then return end
    if gap < 0 then lower_by('t', tpm, tcap, gap) end
    local span_charged, span_raw = gc_at - num('tsc', 0), gr_at - num('tsr', 0)
    if span_charged > 0 and span_raw > 0 then
      -- Sums over about LEARN_SECONDS of traffic at the limit, starting as if that much had been seen
      -- at a factor of 1, so one shortfall moves the factor only a little.
      local window = math.max(1, tpm * LEARN_SECONDS / 60)
      local keep = math.exp(-span_raw / window)
      local counted = math.max(span_charged * 0.5, span_charged - gap)
      set('ta', num('ta', window) * keep + counted)
      set('tb', num('tb', window) * keep + span_raw)
      set('tsc', gc_at); set('tsr', gr_at)
    end
  end
  -- The request bucket: what the provider lost beyond what this bucket expected, over the time since the
  -- last sample, is another client's rate; learnt over about SHARE_SECONDS, so one burst moves it little.
  local function correct_requests(left, belief, charged, corr_at)
    if rpm <= 0 or left < 0 then return end
    if not h.r then first_sight('r', rcap, left); return end
    if belief <= NO_TICKET then return end
    local gap, tolerance = gap_of('r', rpm, rcap, left, belief, charged, corr_at, true)
    -- A gap above the belief is never added to the bucket, so it stays; only its change is news.
    local drift = gap - num('rbase', 0)
    local since = now - num('rspan', num('rts', now))
    if gap > tolerance and left >= rcap - 1 - tolerance then
      -- The provider's bucket is full and this one is not: the gap stopped growing only because the
      -- provider's level is capped. The other client took less than learnt for all that time.
      set('rshare', num('rshare', 0) * math.exp(-math.max(0, since) / SHARE_SECONDS))
      set('rspan', now); set('rbase', gap); set('rpend', 0)
      return
    end
    local lower = gap < -tolerance
    if not lower and math.abs(drift) <= tolerance then return end
    -- What was lowered lately is owed back when a surplus shows the shortfall was a call overtaken in
    -- flight (a busy machine delays some calls past the tolerance): else each one costs its capacity.
    local owed = num('rowed', 0) * math.exp(-math.max(0, now - num('rowed_ts', now)) / OWED_SECONDS)
    local base = gap
    if lower then
      lower_by('r', rrate, rcap, gap)
      set('rowed', owed - gap); set('rowed_ts', now)
      base = 0
    elseif gap > tolerance and owed > 0 then
      -- Only what the surplus shows beyond the tolerance: another client's shortfalls stay lowered.
      local give = math.min(owed, gap - tolerance)
      lower_by('r', rrate, rcap, give)
      set('rowed', owed - give); set('rowed_ts', now)
      base = gap - give
    end
    set('rbase', base)
    -- A call overtaken in flight shows a shortfall and its overtakers a surplus: they cancel in the net
    -- drift since the last sample, which is learnt from only once it exceeds both.
    local pending = num('rpend', 0) + drift
    if math.abs(pending) <= 2 * tolerance or since <= 0 then set('rpend', pending); return end
    local weight = 1 - math.exp(-since / SHARE_SECONDS)
    local share = num('rshare', 0) + weight * (-pending / since) / (rpm / 60)
    set('rshare', math.min(MAX_SHARE, math.max(-SHARE_CREDIT, share)))
    set('rspan', now); set('rpend', 0)
  end
  -- Input and output tokens: what the provider says is left lowers the bucket at once; their counts
  -- are reconciled with the answer's usage (as the provider does), so nothing else is learnt.
  local function correct_plain(b, rate, cap, left, belief, charged, corr_at)
    if rate <= 0 or not left or left < 0 then return end
    if not h[b] then first_sight(b, cap, left); return end
    if not belief or belief <= NO_TICKET then return end
    local gap, tolerance = gap_of(b, rate, cap, left, belief, charged or 0, corr_at or 0, false)
    if gap < -tolerance then lower_by(b, rate, cap, gap) end
  end
  local granted_at = tonumber(A[26]) or 0
  if ticket[1] > NO_TICKET and granted_at > 0 and granted_at < num('lset', 0) then
    -- Admitted under another limit (a configured one above the provider's, before its answers said
    -- so): its belief and its refusal tell nothing about other clients, and learning from a burst of
    -- them would teach a share nobody takes. The buckets only never hold more than is left (less the
    -- tokens a refused call is about to be given back), lowered as a correction so that answers to
    -- calls granted since net it out.
    local stated = {{'r', rrate, rcap, A[3], 0}, {'t', tpm, tcap, A[4], A[15]},
      {'i', itpm, icap, A[18], A[24]}, {'o', otpm, ocap, A[19], A[25]}}
    for _, item in ipairs(stated) do
      local b, rate, cap, left = item[1], item[2], item[3], tonumber(item[4])
      if rate > 0 and left and left >= 0 then
        if not h[b] then
          first_sight(b, cap, left)
        else
          local target = left - (refused == 1 and (tonumber(item[5]) or 0) or 0)
          local gap = target - level(b, rate, cap, math.max(now, num(b .. 'ts', now)))
          if gap < 0 then lower_by(b, rate, cap, gap) end
        end
      end
    end
    save()
    return learnt()
  end
  correct_requests(tonumber(A[3]), ticket[1], tonumber(A[14]), ticket[3])
  correct_tokens(tonumber(A[4]), ticket[2], tonumber(A[15]), ticket[4], ticket[6], ticket[8])
  correct_plain('i', itpm, icap, tonumber(A[18]), tonumber(A[20]), tonumber(A[24]), tonumber(A[22]))
  correct_plain('o', otpm, ocap, tonumber(A[19]), tonumber(A[21]), tonumber(A[25]), tonumber(A[23]))
  if refused == 1 and ticket[1] > NO_TICKET then
    -- A 429 says only that the provider had less than one call's worth: at a saturated key that is
    -- all the headers can show, so each refusal slows the request refill by a tenth and raises the
    -- token charge factor by a tenth; answers showing more left than believed bring them back.
    if rpm > 0 then
      set('rshare', math.min(MAX_SHARE, 1 - (1 - others_share()) / (1 + REFUSAL_STEP)))
    end
    if tpm > 0 and tonumber(A[15]) > 0 then
      local window = math.max(1, tpm * LEARN_SECONDS / 60)
      local d = num('tb', window)
      set('ta', math.min(num('ta', window) + REFUSAL_STEP * d, MAX_FACTOR * d)); set('tb', d)
    end
  end
  save()
  return learnt()
end

if op == 'inspect' then
  -- The limit the workers last acquired with, not the caller's.
  cfg_rpm, cfg_tpm, burst = num('crpm', 0), num('ctpm', 0), num('cburst', burst)
  cfg_itpm, cfg_otpm = num('citpm', 0), num('cotpm', 0)
  shape()
  return {state(), tostring(rpm), tostring(tpm), tostring(cfg_rpm), tostring(cfg_tpm),
    tostring(num('lrpm', 0)), tostring(num('ltpm', 0)),
    tostring(rpm > 0 and level('r', rrate, rcap, now) or 0), tostring(rcap),
    tostring(tpm > 0 and level('t', tpm, tcap, now) or 0), tostring(tcap),
    tostring(math.max(0, cool - now)), tostring(others_share()), tostring(token_factor()),
    tostring(last_minute('n')), tostring(last_minute('e')),
    tostring(itpm), tostring(otpm), tostring(cfg_itpm), tostring(cfg_otpm),
    tostring(num('litpm', 0)), tostring(num('lotpm', 0)),
    tostring(itpm > 0 and level('i', itpm, icap, now) or 0), tostring(icap),
    tostring(otpm > 0 and level('o', otpm, ocap, now) or 0), tostring(ocap)}
end

if op ~= 'acquire' then
  return redis.error_reply('unknown limiter operation ' .. tostring(op))
end

local rwant, twant, max_wait = tonumber(A[1]), tonumber(A[2]), tonumber(A[3])
local priority, hold = tonumber(A[4]), tonumber(A[5])
local iwant, owant = tonumber(A[6]) or 0, tonumber(A[7]) or 0
local low = priority < DEFAULT_PRIORITY

-- The loaded scope's buckets at time `at` for this request: its cost (times the learnt factor), the
-- wait until both buckets hold it, one refill of it, the levels, and the room left after it (0-1).
local function buckets(at)
  local b = {rcost = rwant, tcost = twant * token_factor(), wait = 0, refill = 0, room = 1}
  if rpm > 0 then
    b.r = level('r', rrate, rcap, at)
    -- A cost above capacity is admitted from a full bucket, and the debt slows those that follow.
    local need = math.min(b.rcost + math.min(rpm * spread / 60, SPREAD_SHARE * rcap) + (low and reserve * rcap or 0), rcap)
    if b.r < need then b.wait = math.max(b.wait, (need - b.r) * 60 / rrate) end
    b.refill = math.max(b.refill, b.rcost * 60 / rrate)
    b.room = math.min(b.room, (b.r - b.rcost) / rcap)
  end
  -- A token bucket (combined, input or output): its level at `at` and what it adds to the wait.
  local function fit(name, cost, rate, cap)
    local lvl = level(name, rate, cap, at)
    local need = math.min(cost + math.min(rate * spread / 60, SPREAD_SHARE * cap) + (low and reserve * cap or 0), cap)
    if lvl < need then b.wait = math.max(b.wait, (need - lvl) * 60 / rate) end
    b.refill = math.max(b.refill, cost * 60 / rate)
    b.room = math.min(b.room, (lvl - cost) / cap)
    return lvl
  end
  if tpm > 0 then b.tk = fit('t', b.tcost, tpm, tcap) end
  if itpm > 0 then b.ik = fit('i', iwant, itpm, icap) end
  if otpm > 0 then b.ok = fit('o', owant, otpm, ocap) end
  return b
end

-- When a higher-priority job refused by the loaded scope is due back (0: none), plus the grace.
local function higher_due()
  local due = 0
  for p = priority + 1, MAX_PRIORITY do
    local back = num('w' .. p, 0)
    if back + GRACE > now then due = math.max(due, back + GRACE) end
  end
  return due
end

-- Routing: with several KEYS (deployments of one model), the request goes to the scope that can take
-- it soonest (cooldown, higher-priority jobs due, probing budget, buckets), the roomier on a tie.
-- Nothing is written while they are compared; the chosen one is then loaded and acquired from.
local chosen = 1
if #KEYS > 1 then
  local best_wait, best_room
  for i = 1, #KEYS do
    load(i)
    local at = math.max(now, cool)
    local soonest, room = math.max(at, higher_due()) - now, 1
    local mode = state()
    if mode == 'limited' then
      local b = buckets(at)
      soonest, room = math.max(soonest, (at - now) + b.wait), b.room
    elseif mode == 'probing' and now - num('probe_ts', 0) <= PROBE_WINDOW and num('probe', 0) >= PROBE_REQUESTS then
      soonest = math.max(soonest, PROBE_RETRY)
    end
    if best_wait == nil or soonest < best_wait - 1e-6 or (soonest < best_wait + 1e-6 and room > best_room) then
      chosen, best_wait, best_room = i, soonest, room
    end
  end
  load(chosen)
end

local function acquire()
  -- During a cooldown the buckets are judged as of its end, so callers queued behind it leave it
  -- spaced at the limit's rate instead of all at once.
  local at = math.max(now, cool)
  local mode = state()
  local refusal = {0, '', mode}

  -- A refused job of higher priority comes back at its time; lower ones leave the way clear until then.
  local due = higher_due()
  if due > 0 then
    refusal[2] = tostring(math.max(at, due) - now)
    return refusal
  end

  if mode ~= 'limited' then
    if at - now > max_wait then
      refusal[2] = tostring(at - now)
      return refusal
    end
    if mode == 'probing' then
      -- No limit configured or learnt yet: a few calls go out to read the provider's headers.
      local probes = num('probe', 0)
      if now - num('probe_ts', 0) > PROBE_WINDOW then probes = 0; set('probe_ts', now) end
      if probes >= PROBE_REQUESTS then
        refusal[2] = tostring(math.max(at - now, PROBE_RETRY))
        save()
        return refusal
      end
      set('probe', probes + 1)
    end
    count('n', rwant)
    save()
    return {1, tostring(at - now), mode}
  end

  if num('crpm', 0) ~= cfg_rpm or num('ctpm', 0) ~= cfg_tpm or num('cburst', 0) ~= burst
    or num('citpm', 0) ~= cfg_itpm or num('cotpm', 0) ~= cfg_otpm then
    set('crpm', cfg_rpm); set('ctpm', cfg_tpm); set('cburst', burst); set('citpm', cfg_itpm); set('cotpm', cfg_otpm)
  end
  local b = buckets(at)
  local rcost, tcost, bucket_wait, refill, r, tk = b.rcost, b.tcost, b.wait, b.refill, b.r, b.tk
  local wait = (at - now) + bucket_wait
  -- Below the default priority a job may not hold a long reservation that higher ones would queue behind.
  local longest = max_wait
  if low then longest = math.min(max_wait, (at - now) + math.max(hold, refill)) end
  if wait > longest then
    if priority > 0 then set('w' .. priority, math.max(num('w' .. priority, 0), now + wait)); save() end
    refusal[2] = tostring(wait)
    return refusal
  end
  local rbelief, tbelief = NO_TICKET, NO_TICKET
  if rpm > 0 then
    set('r', r - rcost); set('rts', at)
    set('rgc', num('rgc', 0) + rcost); set('rgr', num('rgr', 0) + rwant)
    -- What the provider should have left after this call when it arrives (its level is capped too).
    rbelief = math.min(rcap, r + bucket_wait * rrate / 60) - rcost
  end
  if tpm > 0 then
    set('t', tk - tcost); set('tts', at)
    set('tgc', num('tgc', 0) + tcost); set('tgr', num('tgr', 0) + twant)
    tbelief = math.min(tcap, tk + bucket_wait * tpm / 60) - tcost
  end
  -- Input and output tokens are charged as asked: their counts are reconciled with the answer's usage.
  local split = {}
  for _, item in ipairs({{'i', iwant, itpm, icap, b.ik}, {'o', owant, otpm, ocap, b.ok}}) do
    local name, cost, rate, cap, lvl = item[1], item[2], item[3], item[4], item[5]
    local charged, belief = 0, NO_TICKET
    if rate > 0 then
      set(name, lvl - cost); set(name .. 'ts', at)
      charged, belief = cost, math.min(cap, lvl + bucket_wait * rate / 60) - cost
    end
    split[name] = {charged, belief}
  end
  count('n', rwant)
  save()
  return {1, tostring(wait), mode, tostring(rcost), tostring(tcost), tostring(rbelief), tostring(tbelief),
    tostring(num('rc', 0)), tostring(num('tc', 0)), tostring(num('rgc', 0)), tostring(num('tgc', 0)),
    tostring(num('rgr', 0)), tostring(num('tgr', 0)), tostring(now),
    tostring(split.i[1]), tostring(split.o[1]), tostring(split.i[2]), tostring(split.o[2]),
    tostring(num('ic', 0)), tostring(num('oc', 0))}
end

-- Every reply has the same length, with the chosen candidate last.
local REPLY = 20
local reply = acquire()
for i = 4, REPLY do reply[i] = reply[i] or '0' end
reply[REPLY + 1] = tostring(chosen)
return reply
