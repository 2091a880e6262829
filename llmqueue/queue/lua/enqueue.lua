-- Enqueue a chunk of jobs, each unless it is already queued, running or finished (an id runs once).
-- ARGV[4] arq's job key prefix  ARGV[5] llmqueue's result key prefix  ARGV[6] job key ttl (ms)
-- ARGV[7] how many jobs; then, per job: id, serialized arq job, score (ms), priority (0-9), lane
-- returns a list with 1 for each job enqueued and 0 for each id that was already known
-- (Job and result keys are built here from their prefixes: one call per chunk, not per job, is what
-- makes submitting thousands of jobs cheap. They live on one Redis, not a cluster.)
local count = tonumber(ARGV[7])
local seq = redis.call('INCRBY', PFX .. 'seq', count) - count
local added = {}
for i = 8, #ARGV, 5 do
  local id = ARGV[i]
  local job_key = ARGV[4] .. id
  seq = seq + 1
  if redis.call('EXISTS', job_key) == 1 or redis.call('EXISTS', ARGV[5] .. id) == 1 then
    added[#added + 1] = 0
  else
    local score = tonumber(ARGV[i + 2])
    local route = ARGV[i + 3] .. '\t' .. seq .. '\t' .. ARGV[i + 4]
    redis.call('SET', job_key, ARGV[i + 1], 'PX', ARGV[6])
    redis.call('ZADD', QUEUE, score, id)
    redis.call('HSET', ROUTES, id, route)
    place(id, score, route)
    added[#added + 1] = 1
  end
end
return added
