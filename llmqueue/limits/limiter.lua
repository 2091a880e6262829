-- The shared limiter of one or more scopes: virtual scheduling (GCRA), one theoretical arrival time
-- (TAT) per limited dimension of a scope: requests (r), tokens (t), input (i) and output (o) tokens.
--
-- The rules, for a dimension limited to `rate` units a minute with a burst of `burst` seconds:
--  1. A call of q units may be sent at  max(TAT, now) + q/rate - tolerance  (at once if that is past);
--     tolerance is the burst less the spread every call leaves unused, and less the reserve for jobs
--     below the default priority. A call above the tolerance needs TAT <= now (a full bucket); one
--     above a minute's rate can never be sent and is refused as too large.
--  2. Admitting it moves TAT to  max(TAT, send time) + q/rate , the send time being the latest over the
--     dimensions, the cooldown and `now`: calls are spaced, never on one instant beyond the burst.
--  3. What is given back (tokens the answer did not use, a call not sent) moves TAT back by its time,
--     and parked jobs that could now go sooner are woken, highest priority first.
--  4. The provider's headers win: a stated limit replaces a higher configured one (TAT rescaled so the
--     units owed stay owed), and what it says is left, less what was admitted after the call, caps
--     the level (TAT pushed on), and raises it while no call is set beyond the burst (rule 2 holds for
--     those). What it lost beyond our calls is another client's use: our requests are spaced for the rest.
--  5. A 429 pauses the scope (cooldown) and empties its request bucket as of the pause's end: the calls
--     after it leave spaced at the rate, the first a call's time after the pause.
--  6. A job refused for longer than it may wait is parked (KEYS[n+i]) and told when to come back; a
--     refused job of higher priority holds back lower ones until it is due.
--  7. Until its provider first answers, a scope sends two calls at a time (a probe), configured or not.
--
-- KEYS[1..n] the scopes' hashes (n > 1: deployments of one model, the one that can admit soonest is
-- taken); KEYS[n+1..2n] their parked jobs (acquire, settle). ARGV[1] the operation, ARGV[2] now in
-- seconds ('' for Redis TIME), ARGV[3] its arguments as JSON. Replies are JSON.
local PROBE_REQUESTS, PROBE_WINDOW, PROBE_RETRY = 2, 5, 0.2
local SPREAD_SHARE, REORDER_SECONDS, GRACE, SLOT, SLOTS = 0.25, 0.1, 0.2, 5, 12
local DEFAULT_PRIORITY, MAX_PRIORITY, WAKE_BATCH, WAKE_MARGIN, OTHERS_SECONDS = 1, 9, 32, 0.25, 10
-- A job below the default priority may hold LOW_HOLD seconds (or one refill) at most; parked jobs are
-- woken within WAKE_WITHIN s (the inline wait); another client's share slows ours from OTHERS_NOTICED.
local LOW_HOLD, WAKE_WITHIN, OTHERS_NOTICED, OTHERS_MOST, OTHERS_WATCHED = 0.1, 2, 0.05, 0.9, 5
local DIMS = {'r', 't', 'i', 'o'}

local op, args = ARGV[1], cjson.decode(ARGV[3])
local now = tonumber(ARGV[2])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local n = (op == 'acquire' or op == 'settle') and #KEYS / 2 or #KEYS

-- A scope's rate per dimension from its configured `limit` and what was learnt (the lower of the two).
-- A new rate keeps the units still owed: what TAT - now meant at the old rate. True if a rate rose.
local function derive(s, limit)
  local rose = false
  for _, d in ipairs(DIMS) do
    local cfg, learnt = tonumber(limit[d]) or 0, tonumber(s.h['l' .. d]) or 0
    local rate = (cfg > 0 and learnt > 0) and math.min(cfg, learnt) or math.max(cfg, learnt)
    local per = s.rate[d] or tonumber(s.h[d .. 'per']) or 0
    local tat = s.tat[d] or tonumber(s.h[d .. 'tat']) or now
    if per > 0 and rate > 0 and per ~= rate then tat = now + math.max(0, tat - now) * per / rate end
    if rate ~= per then s.w[d .. 'per'] = rate; s.w.lset = now end
    rose = rose or (per > 0 and rate > per)
    s.rate[d], s.tat[d] = rate, tat
  end
  return rose
end

-- Scope i as stored: its hash `h`, pending writes `w`, its rates and TATs.
-- Without a `limit` (cooldown), the one workers last acquired with.
local function load(i, limit)
  local raw = redis.call('HGETALL', KEYS[i])
  local s = {key = KEYS[i], parked = KEYS[n + i], h = {}, w = {}, rate = {}, tat = {}}
  for j = 1, #raw, 2 do s.h[raw[j]] = raw[j + 1] end
  limit = limit or {r = s.h.cr, t = s.h.ct, i = s.h.ci, o = s.h.co}
  s.burst = tonumber(limit.burst) or tonumber(s.h.burst) or 1
  s.spread = math.min(tonumber(limit.spread) or 0, SPREAD_SHARE * s.burst)
  s.reserve = (tonumber(limit.reserve) or 0) * s.burst
  s.cool = tonumber(s.h.cool) or 0
  derive(s, limit)
  -- Another client's use (requests a minute): what it took over the time it was watched, both decaying
  -- alike, so the rate is known after OTHERS_WATCHED s and forgotten once unwatched. Ours get the rest.
  -- What it took is kept below 0 too (down to a bucket): an answer's noise (a call counted on arrival,
  -- a rounded count) is undone by the next answer's, and cut off at 0 it would add up to a share.
  local decay = math.exp(-math.max(0, now - (tonumber(s.h.others_ts) or 0)) / OTHERS_SECONDS)
  local bucket = s.burst * s.rate.r / 60
  s.others_taken = math.max(-bucket, tonumber(s.h.others) or 0) * decay
  s.watched = (tonumber(s.h.others_dt) or 0) * decay
  s.others = math.max(0, s.others_taken) * 60 / math.max(s.watched, OTHERS_WATCHED)
  local share = s.rate.r > 0 and s.others / s.rate.r or 0
  s.share = share >= OTHERS_NOTICED and math.min(share, OTHERS_MOST) or 0
  return s
end
local function put(s, field, value) s.h[field] = value; s.w[field] = value end
local function num(s, field) return tonumber(s.h[field]) or 0 end
local function state(s)
  if not s.h.hdr then return 'probing' end
  for _, d in ipairs(DIMS) do if s.rate[d] > 0 then return 'limited' end end
  return s.h.hdr == 'none' and 'unlimited' or 'probing'
end
-- Seconds of the dimension's rate that q units take; `cost`: of our calls, after another client's share.
local function span(s, d, q) return q * 60 / s.rate[d] end
local function cost(s, d, q) return span(s, d, q) / (d == 'r' and 1 - s.share or 1) end
local function save(s)
  for _, d in ipairs(DIMS) do if s.rate[d] > 0 then s.w[d .. 'tat'] = s.tat[d] end end
  for field, value in pairs(s.w) do redis.call('HSET', s.key, field, tostring(value)) end
  local ttl = 3600 + math.ceil(math.max(0, s.cool - now))
  for _, d in ipairs(DIMS) do ttl = math.max(ttl, 3600 + math.ceil(math.max(0, s.tat[d] - now))) end
  redis.call('EXPIRE', s.key, ttl)
  for _, d in ipairs(DIMS) do redis.call('EXPIRE', s.key .. ':back:' .. d, ttl) end
  if s.parked then redis.call('EXPIRE', s.parked, ttl); redis.call('EXPIRE', s.parked .. ':want', ttl) end
end

-- Grants and 429s per 5 s slot over the last minute, for the view.
local function count(s, kind)
  local slot = math.floor(now / SLOT); local i = slot % SLOTS
  if num(s, kind .. 's' .. i) ~= slot then put(s, kind .. i, 0); put(s, kind .. 's' .. i, slot) end
  put(s, kind .. i, num(s, kind .. i) + 1)
end
local function last_minute(s, kind)
  local slot, total = math.floor(now / SLOT), 0
  for i = 0, SLOTS - 1 do
    if slot - num(s, kind .. 's' .. i) < SLOTS then total = total + num(s, kind .. i) end
  end
  return total
end

-- When a call of `want` units of each dimension could be sent, the room it would leave (0-1), and the
-- longest time one of its dimensions takes to refill it.
local function schedule(s, want, low)
  local tolerance = s.burst - s.spread - (low and s.reserve or 0)
  local at, room, refill = math.max(now, s.cool), 1, 0
  for _, d in ipairs(DIMS) do
    local q = tonumber(want[d]) or 0
    if s.rate[d] > 0 and q > 0 then
      local took = cost(s, d, q)
      at = math.max(at, math.max(s.tat[d], now) + took - math.max(tolerance, took))
      room = math.min(room, 1 - (math.max(s.tat[d], now) - now + took) / s.burst)
      refill = math.max(refill, took)
    end
  end
  return at, room, refill
end

-- Admits `want` at `at`: each limited dimension's TAT moves on by its time. Returns the units taken.
local function take(s, want, at)
  local taken = {}
  for _, d in ipairs(DIMS) do
    local q = tonumber(want[d]) or 0
    if s.rate[d] > 0 and q > 0 then s.tat[d] = math.max(s.tat[d], at) + cost(s, d, q); taken[d] = q end
  end
  return taken
end

-- When a refused job of higher priority than `priority` is due back (0: none), plus the grace.
local function higher_due(s, priority)
  local due = 0
  for p = priority + 1, MAX_PRIORITY do due = math.max(due, num(s, 'w' .. p) + GRACE) end
  return due > now and due or 0
end

-- Parked jobs that could now go well before they were told to come back (capacity given back, a limit
-- learnt higher) are told again: admitted in thought in priority order against a copy of the TATs,
-- each gets its own send time, and those that moved are returned as {job, new time} to re-schedule.
local function wake(s)
  local head = redis.call('ZRANGE', s.parked, 0, WAKE_BATCH - 1, 'WITHSCORES')
  local real, woken = s.tat, {}
  s.tat = {r = real.r, t = real.t, i = real.i, o = real.o}
  for j = 1, #head, 2 do
    local job, score = head[j], tonumber(head[j + 1])
    local told, want = score % 1e10, redis.call('HGET', s.parked .. ':want', job)
    if told < now - 60 or not want then
      redis.call('ZREM', s.parked, job); redis.call('HDEL', s.parked .. ':want', job)
    else
      want = cjson.decode(want); local at = schedule(s, want, false)
      if at - now > WAKE_WITHIN then break end
      take(s, want, at)
      if at < told - WAKE_MARGIN then
        redis.call('ZADD', s.parked, score - told + at, job)
        woken[#woken + 1] = {job, at - now}
      end
    end
  end
  s.tat = real
  return woken
end

if op == 'acquire' then
  local want, priority, job = args.want, tonumber(args.priority), args.job
  local low = priority < DEFAULT_PRIORITY
  -- Each candidate's soonest send time; the soonest wins, the roomier on a tie.
  local S, best, best_at, best_room = {}, nil, nil, nil
  for i = 1, n do
    local s = load(i, args.limits[i]); S[i] = s
    s.at, s.room, s.refill = schedule(s, want, low)
    s.due = higher_due(s, priority)
    local at = math.max(s.at, s.due)
    local probes_out = now - num(s, 'probe_ts') <= PROBE_WINDOW and num(s, 'probe') >= PROBE_REQUESTS
    if state(s) == 'probing' and probes_out then at = math.max(at, now + PROBE_RETRY) end
    if best == nil or at < best_at - 1e-6 or (at < best_at + 1e-6 and s.room > best_room) then
      best, best_at, best_room = i, at, s.room
    end
  end
  local s, limit = S[best], args.limits[best]
  local mode, at = state(s), s.at
  local reply = {admitted = false, choice = best, state = mode}
  put(s, 'cset', now); put(s, 'burst', s.burst)
  for _, d in ipairs(DIMS) do
    local q = tonumber(want[d]) or 0
    if (tonumber(limit[d]) or 0) > 0 then put(s, 'c' .. d, limit[d]) end
    -- Too large for the limit itself: refused for good, nothing taken.
    if s.rate[d] > 0 and q > s.rate[d] and not reply.too_large then
      reply.too_large = {dimension = d, asked = q, limit = s.rate[d]}
    end
  end
  if reply.too_large then save(s); return cjson.encode(reply) end
  local longest = tonumber(args.max_wait)
  if low then longest = math.min(longest, math.max(0, s.cool - now) + math.max(LOW_HOLD, s.refill)) end
  local refused_for = nil
  if s.due > 0 then
    refused_for = math.max(at, s.due) - now
  elseif mode == 'probing' then
    if now - num(s, 'probe_ts') > PROBE_WINDOW then put(s, 'probe', 0); put(s, 'probe_ts', now) end
    if num(s, 'probe') >= PROBE_REQUESTS then refused_for = math.max(at - now, PROBE_RETRY) end
  end
  if refused_for == nil and at - now > longest then
    refused_for = at - now
    if not low and mode == 'limited' then put(s, 'w' .. priority, math.max(num(s, 'w' .. priority), at)) end
  end
  if refused_for ~= nil then
    if job and mode == 'limited' then
      redis.call('ZADD', s.parked, (MAX_PRIORITY - priority) * 1e10 + now + refused_for, job)
      redis.call('HSET', s.parked .. ':want', job, cjson.encode(want))
    end
    reply.wait = refused_for
  else
    if job then  -- admitted: no longer parked on any candidate
      for i = 1, n do
        redis.call('ZREM', KEYS[n + i], job); redis.call('HDEL', KEYS[n + i] .. ':want', job)
      end
    end
    if mode == 'probing' then put(s, 'probe', num(s, 'probe') + 1) end
    reply.marks = {}
    for d, q in pairs(take(s, want, at)) do
      put(s, d .. 'g', num(s, d .. 'g') + q)
      reply.marks[d] = num(s, d .. 'g')
    end
    count(s, 'n')
    reply.admitted, reply.wait, reply.at, reply.granted = true, at - now, at, now
  end
  save(s)
  return cjson.encode(reply)
end

local s = load(1, args.limit)

-- Units given back by calls granted after `mark` (up to `upto`), kept by their grant's mark (`g` only grows).
local function returned(s, d, mark, upto)
  local back, total = s.key .. ':back:' .. d, 0
  redis.call('ZREMRANGEBYSCORE', back, '-inf', num(s, d .. 'g') - 2 * s.rate[d])
  local entries = redis.call('ZRANGEBYSCORE', back, '(' .. mark, upto or '+inf')
  for _, entry in ipairs(entries) do total = total + tonumber(entry:match(':(.+)$')) end
  return total
end

if op == 'settle' then
  local said, marks, sooner = args.said or {}, args.marks or {}, false
  local stated = said.limit or {}
  for _, d in ipairs(DIMS) do
    local value = tonumber(stated[d]) or 0
    if value > 0 and value ~= num(s, 'l' .. d) then put(s, 'l' .. d, value) end
  end
  if next(stated) ~= nil then
    put(s, 'hdr', 'yes'); sooner = derive(s, args.limit)
  elseif args.no_headers and s.h.hdr ~= 'yes' then put(s, 'hdr', 'none') end
  -- Given back: tokens the answer did not use, or a call that never reached the provider. During a
  -- cooldown a request's slot is not: the calls kept after the pause hold theirs, spaced at the rate.
  -- Nor is a refused one's, admitted under the limit in force: the key had less than believed.
  local current = (tonumber(args.granted) or 0) >= num(s, 'lset')  -- admitted under the limit in force
  local kept = args.refused and current
  for d, q in pairs(args.give) do
    q = tonumber(q)
    if s.rate[d] and s.rate[d] > 0 and q ~= 0 and not (d == 'r' and kept) then
      if not (d == 'r' and now < s.cool) then s.tat[d] = s.tat[d] - cost(s, d, q) end
      local mark = tonumber(marks[d])
      if mark then redis.call('ZADD', s.key .. ':back:' .. d, mark, mark .. ':' .. q) end
      if q > 0 then sooner = true end
    end
  end
  -- What the provider said was left when the call reached it, refilled since, less what was admitted
  -- after the call, caps what the scope holds now (both may be below 0: calls reserved ahead).
  local sent = math.min(now, tonumber(args.at) or now)
  for d, left in pairs(said.left or {}) do
    left = tonumber(left)
    if s.rate[d] and s.rate[d] > 0 and left >= 0 then
      -- Units admitted after this call (its mark is the running total at its grant), less given back.
      local mark, per_second = tonumber(marks[d]), s.rate[d] / 60
      local since = mark and math.max(0, num(s, d .. 'g') - mark - returned(s, d, mark)) or 0
      local held = left + (now - sent) * per_second * (d == 'r' and 1 - s.share or 1)  -- ours of the refill
      local provider = math.min(s.burst * per_second, held) - since
      local gap = (s.burst - math.max(0, s.tat[d] - now)) * per_second - provider
      local tolerance = math.max(0.5, s.rate[d] * REORDER_SECONDS / 60)
      if gap < -tolerance and now >= s.cool and s.tat[d] - now <= s.burst then
        -- The provider has more than believed (a pause it refilled in, calls voided): so does the scope,
        -- unless calls are set beyond the burst: new ones would land on their instants.
        s.tat[d] = math.max(now - s.burst, s.tat[d] - span(s, d, -gap))
        sooner = true
      elseif gap > tolerance then
        s.tat[d] = math.max(s.tat[d], now) + span(s, d, gap)
      end
      -- Another client's use: what the provider lost between two answers beyond the calls admitted
      -- between them (only while its bucket was below full, where the refill is known).
      local prev_at = num(s, 'rseen_at')
      if d == 'r' and mark and not args.refused and sent > prev_at then
        local refilled = num(s, 'rseen_left') + (sent - prev_at) * per_second
        if current and sent - prev_at < OTHERS_SECONDS and refilled < s.burst * per_second then
          local seen = num(s, 'rseen_mark')
          local taken = refilled - left - (mark - seen - returned(s, d, seen, mark))
          put(s, 'others', s.others_taken + taken); put(s, 'others_dt', s.watched + sent - prev_at)
          put(s, 'others_ts', now)
        end
        put(s, 'rseen_at', sent); put(s, 'rseen_left', left); put(s, 'rseen_mark', mark)
      end
    end
  end
  -- Any answer, a 429 too, ends a probe: the next may go.
  if state(s) == 'probing' then put(s, 'probe', math.max(0, num(s, 'probe') - 1)) end
  local learnt = {r = num(s, 'lr'), t = num(s, 'lt'), i = num(s, 'li'), o = num(s, 'lo')}
  local woken = sooner and wake(s) or {}
  save(s)
  return cjson.encode({learnt = learnt, woken = woken})
end

if op == 'cooldown' then
  local seconds, longest = tonumber(args.seconds) or 0, tonumber(args.longest) or 0
  if seconds > 0 then
    local pause = seconds
    if now >= s.cool then
      -- With `longest` (a deployment taken out), one that fails again soon after is paused longer.
      local again = longest > 0 and now - s.cool < math.max(2, 2 * num(s, 'pause'))
      local streak = again and num(s, 'streak') + 1 or 0
      if longest > 0 then pause = math.min(longest, seconds * 2 ^ streak) end
      put(s, 'streak', streak); put(s, 'pause', pause)
    end
    s.cool = math.max(s.cool, now + pause)
    put(s, 'cool', s.cool)
    if args.counted then
      count(s, 'e')
      -- The provider's bucket is empty: after the pause, calls leave spaced at the rate.
      if s.rate.r > 0 then s.tat.r = math.max(s.tat.r, s.cool + s.burst) end
    end
    save(s)
  end
  return cjson.encode({left = math.max(0, s.cool - now), limits_set = num(s, 'lset')})
end

if op == 'inspect' then
  -- The state is that of the limit last acquired with; a configured limit shows while workers acquire
  -- with it (within `fresh` seconds). Per dimension: {rate in force, configured, learnt, level, capacity}.
  local out = {state = state(s), cooldown = math.max(0, s.cool - now), n = last_minute(s, 'n'),
    e = last_minute(s, 'e'), others = s.others}
  local fresh, configured = now - num(s, 'cset') < tonumber(args.fresh), {}
  for _, d in ipairs(DIMS) do configured[d] = fresh and num(s, 'c' .. d) or 0 end
  s = load(1, configured)
  for _, d in ipairs(DIMS) do
    local level = math.max(0, s.burst - math.max(0, s.tat[d] - now)) * s.rate[d] / 60
    out[d] = {s.rate[d], configured[d], num(s, 'l' .. d), level, s.rate[d] * s.burst / 60}
  end
  return cjson.encode(out)
end

return redis.error_reply('unknown limiter operation ' .. tostring(op))
