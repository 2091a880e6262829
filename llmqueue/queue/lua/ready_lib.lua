-- Shared by the queue scripts (prepended to each): the ready structures beside arq's queue.
-- arq's sorted set (QUEUE) keeps every unfinished job scored by when it is due (ms), as arq expects;
-- llmqueue's workers take ready jobs from per-priority lanes instead (see keys.ready_prefix).
-- ARGV[1] the ready prefix  ARGV[2] arq's queue (sorted set)  ARGV[3] now (ms, the caller's clock,
-- as arq's scores are); each script's own arguments start at ARGV[4].
local PFX = ARGV[1]
local QUEUE = ARGV[2]
local NOW = tonumber(ARGV[3])
local ROUTES = PFX .. 'routes'
local DELAYED = PFX .. 'delayed'
local CLAIMED = PFX .. 'claimed'
-- The ids of the jobs in some lane (ready, waiting for a slot) but a paused batch's: what an
-- autoscaler counts (SCARD). A paused batch's jobs wait in its lane uncounted (pause_lane.lua), as no
-- worker would take them.
local READY = PFX .. 'ready'
local IN_PROGRESS = '@IN_PROGRESS@'
local JOB = '@JOB@'
local BATCH_HASH = '@BATCH@'

local function parse_route(route)
  local p, seq, lane = string.match(route, '^(%d)\t([^\t]*)\t(.*)$')
  return p, seq, lane
end

-- Lanes known to be listed in their priority's lanes during this script call (enqueueing a chunk of
-- one batch checks its lane once, not once per job); JOINED[lanes key .. lane] = true.
local JOINED = {}

-- Whether a lane is a paused batch's; asked once per lane in a script call (PAUSED_LANES[lane]).
local PAUSED_LANES = {}
local function lane_paused(lane)
  if lane == '' then return false end
  if PAUSED_LANES[lane] == nil then
    PAUSED_LANES[lane] = redis.call('HEXISTS', BATCH_HASH .. lane, 'paused') == 1
  end
  return PAUSED_LANES[lane]
end

-- Add a job to its lane; a lane that had nothing ready joins its priority at the current virtual time.
local function make_ready(id, route)
  local p, seq, lane = parse_route(route)
  if not p then return end
  local lanes = PFX .. 'lanes:' .. p
  if not JOINED[lanes .. ':' .. lane] then
    if not redis.call('ZSCORE', lanes, lane) then
      redis.call('ZADD', lanes, redis.call('GET', PFX .. 'vclock:' .. p) or '0', lane)
    end
    JOINED[lanes .. ':' .. lane] = true
  end
  redis.call('ZADD', PFX .. 'lane:' .. p .. ':' .. lane, seq, id)
  if not lane_paused(lane) then redis.call('SADD', READY, id) end
end

-- Count a lane's ready jobs in READY (on = true) or not (a paused batch's), a chunk at a time.
local function count_lane(lane, on)
  local changed = 0
  for p = 0, 9 do
    local ids = redis.call('ZRANGE', PFX .. 'lane:' .. p .. ':' .. lane, 0, -1)
    for i = 1, #ids, 1000 do
      changed = changed + redis.call(on and 'SADD' or 'SREM', READY, unpack(ids, i, math.min(i + 999, #ids)))
    end
  end
  return changed
end

-- Put a queued job where its arq score says: in its lane when due, else among the delayed.
local function place(id, score, route)
  route = route or redis.call('HGET', ROUTES, id)
  if not route then return end
  if score > NOW then
    redis.call('ZADD', DELAYED, score, id)
  else
    make_ready(id, route)
  end
end

-- A job back from a worker (or found unclaimed): placed by its arq score, forgotten when it has none.
local function requeue(id)
  local score = redis.call('ZSCORE', QUEUE, id)
  if score then
    place(id, tonumber(score))
  else
    redis.call('HDEL', ROUTES, id)
  end
end
