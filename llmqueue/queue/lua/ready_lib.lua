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
-- The ids of the jobs in some lane (ready, waiting for a slot): what an autoscaler counts (SCARD).
local READY = PFX .. 'ready'
local IN_PROGRESS = '@IN_PROGRESS@'
local JOB = '@JOB@'

local function parse_route(route)
  local p, seq, lane = string.match(route, '^(%d)\t([^\t]*)\t(.*)$')
  return p, seq, lane
end

-- Lanes known to be listed in their priority's lanes during this script call (enqueueing a chunk of
-- one batch checks its lane once, not once per job); JOINED[lanes key .. lane] = true.
local JOINED = {}

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
  redis.call('SADD', READY, id)
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
