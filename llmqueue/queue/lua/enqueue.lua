-- Enqueue a chunk of jobs, each unless it is already queued, running or finished (an id runs once).
-- KEYS[1] the queue (sorted set)
-- ARGV[1] arq's job key prefix  ARGV[2] llmqueue's result key prefix  ARGV[3] job key ttl (ms)
-- then, per job: ARGV[n] job id, ARGV[n+1] serialized arq job, ARGV[n+2] score (ms)
-- returns a list with 1 for each job enqueued and 0 for each id that was already known
-- (Job and result keys are built here from their prefixes: one call per chunk, not per job, is what
-- makes submitting thousands of jobs cheap. They live on one Redis, not a cluster.)
local added = {}
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  local job_key = ARGV[1] .. id
  if redis.call('EXISTS', job_key) == 1 or redis.call('EXISTS', ARGV[2] .. id) == 1 then
    added[#added + 1] = 0
  else
    redis.call('SET', job_key, ARGV[i + 1], 'PX', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
    added[#added + 1] = 1
  end
end
return added
