-- Claim up to N ready jobs: the highest priority first; within a priority, the lane (batch) with the
-- lowest virtual time (weighted round-robin); within a lane, enqueue order. Each claimed job gets
-- arq's in-progress key (the heartbeat keeps it alive) and is noted as claimed.
-- ARGV[4] N  ARGV[5] at most this many of priority below ARGV[6]  ARGV[7] claim ttl (ms)
-- ARGV[8] sweep interval (ms)  ARGV[9] arq queue members checked per sweep
-- ARGV[10..13] llmqueue's result, state, errors and batch key prefixes  ARGV[14] now (ISO time)
-- ARGV[15] state ttl (s)  ARGV[16] arq's retry key prefix  ARGV[17] arq's abort set
-- ARGV[18] the paused scopes' hash  ARGV[19..] a batch's gate fields
-- returns {id, arq score, priority, {has result, {first start, fallback, fallback after}, failed
-- attempts, batch gate, paused scopes}, payload, try, aborted, ...}:
-- what JobStore.begin_attempt reads and what arq's run_job reads in a transaction of its own (the
-- payload, the try count it increments, the abort mark it takes), so a claimed job starts without a
-- round trip.
local RESULT, STATE, ERRORS, BATCH = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local RETRY, ABORT, PAUSED = ARGV[16], ARGV[17], ARGV[18]
local GATE = {}
for i = 19, #ARGV do GATE[#GATE + 1] = ARGV[i] end

local function attempt_start(id, lane)
  local state = STATE .. id
  redis.call('HSETNX', state, 'started_at', ARGV[14])
  local started = redis.call('HMGET', state, 'started_at', 'fallback', 'fallback_after')
  redis.call('EXPIRE', state, ARGV[15])
  local gate = {}
  if lane ~= '' then gate = redis.call('HMGET', BATCH .. lane, unpack(GATE)) end
  return {redis.call('EXISTS', RESULT .. id), started, redis.call('LRANGE', ERRORS .. id, 0, -1), gate,
          redis.call('HKEYS', PAUSED)}
end
local function promote_due()
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', NOW, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    requeue(id)
  end
end

-- Claimed jobs whose in-progress key is gone (their worker died) go back where they belong.
local function sweep()
  for _, id in ipairs(redis.call('ZRANGE', CLAIMED, 0, -1)) do
    if redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
      redis.call('ZREM', CLAIMED, id)
      requeue(id)
    end
  end
end

-- A route for a job queued by other means (an older llmqueue, arq itself): from its payload.
local function route_from_payload(id, score)
  local p, lane = 1, ''
  local raw = redis.call('GET', JOB .. id)
  if raw then
    local ok, data = pcall(cjson.decode, raw)
    if ok and type(data) == 'table' and type(data.a) == 'table' and type(data.a[1]) == 'table' then
      local job = data.a[1]
      local v = job.priority
      if type(v) == 'number' and v >= 0 and v <= 9 and v == math.floor(v) then p = v
      elseif v == 'batch' then p = 0
      elseif v == 'interactive' then p = 2 end
      if type(job.batch_id) == 'string' then lane = job.batch_id end
    end
  end
  -- Sequenced before anything queued since: these jobs were queued first.
  return string.format('%d\t%d\t%s', p, score - 1e13, lane)
end

-- The next slice of arq's queue: any job in none of the structures (queued by arq or an older
-- llmqueue, or re-deferred by a plain arq worker) is placed. The slice moves on every sweep.
local function reconcile(count)
  local cursor = tonumber(redis.call('GET', PFX .. 'cursor') or '0')
  local members = redis.call('ZRANGE', QUEUE, cursor, cursor + count - 1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local id, score = members[i], tonumber(members[i + 1])
    if redis.call('EXISTS', IN_PROGRESS .. id) == 0 and not redis.call('ZSCORE', CLAIMED, id)
        and not redis.call('ZSCORE', DELAYED, id) then
      local route = redis.call('HGET', ROUTES, id)
      if not route then
        route = route_from_payload(id, score)
        redis.call('HSET', ROUTES, id, route)
      end
      local p, seq, lane = parse_route(route)
      if p and not redis.call('ZSCORE', PFX .. 'lane:' .. p .. ':' .. lane, id) then
        place(id, score, route)
      end
    end
  end
  local seen = #members / 2
  redis.call('SET', PFX .. 'cursor', seen < count and 0 or cursor + seen)
end

promote_due()
if redis.call('SET', PFX .. 'sweep', '1', 'PX', ARGV[8], 'NX') then
  sweep()
  reconcile(tonumber(ARGV[9]))
end

local out = {}
local left, low_left, low_below, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
for p = 9, 0, -1 do
  if left <= 0 then break end
  local lanes = PFX .. 'lanes:' .. p
  local low = p < low_below
  while left > 0 and (not low or low_left > 0) do
    local head = redis.call('ZRANGE', lanes, 0, 0, 'WITHSCORES')
    if #head == 0 then break end
    local lane, vtime = head[1], tonumber(head[2])
    if lane ~= '' and redis.call('HEXISTS', BATCH .. lane, 'paused') == 1 then
      -- A paused batch: its lane leaves the turn, its jobs stay in it (a resume lists it again).
      redis.call('ZREM', lanes, lane)
      JOINED[lanes .. ':' .. lane] = nil
    else
      local lane_key = PFX .. 'lane:' .. p .. ':' .. lane
      local popped = redis.call('ZPOPMIN', lane_key)
      if redis.call('EXISTS', lane_key) == 0 then
        redis.call('ZREM', lanes, lane)
        JOINED[lanes .. ':' .. lane] = nil
      else
        local weight = tonumber(redis.call('HGET', PFX .. 'weights', lane) or '1')
        redis.call('ZADD', lanes, vtime + 1 / weight, lane)
      end
      redis.call('SET', PFX .. 'vclock:' .. p, vtime)
      local id = popped[1]
      if id then
        redis.call('SREM', READY, id)
        local score = redis.call('ZSCORE', QUEUE, id)
        if not score then
          redis.call('HDEL', ROUTES, id)  -- finished or cancelled meanwhile
        elseif tonumber(score) > NOW then
          redis.call('ZADD', DELAYED, score, id)  -- re-deferred by a plain arq worker
        elseif redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
          redis.call('SET', IN_PROGRESS .. id, '1', 'PX', ttl)
          redis.call('ZADD', CLAIMED, NOW, id)
          out[#out + 1] = id
          out[#out + 1] = score
          out[#out + 1] = p
          out[#out + 1] = attempt_start(id, lane)
          out[#out + 1] = redis.call('GET', JOB .. id)
          out[#out + 1] = redis.call('INCR', RETRY .. id)
          redis.call('EXPIRE', RETRY .. id, 88400)  -- as arq's run_job
          out[#out + 1] = redis.call('ZREM', ABORT, id)
          left = left - 1
          if low then low_left = low_left - 1 end
        end
      end
    end
  end
end
return out
