-- A claimed job's end of one run, in place of arq's finish_job pipeline: the claim is dropped, and
-- the job is finished (arq's keys deleted), deferred (its arq score moved on) or put back as it was.
-- ARGV[4] job id  ARGV[5] 'finish', 'defer' or 'back'  ARGV[6] ms to add to the score ('defer')
-- ARGV[7] arq result bytes ('' for none)  ARGV[8] their ttl in ms ('' keeps them)
-- ARGV[9] arq's retry key prefix  ARGV[10] arq's result key prefix  ARGV[11] arq's abort set
local id, mode = ARGV[4], ARGV[5]
redis.call('DEL', IN_PROGRESS .. id)
redis.call('ZREM', CLAIMED, id)
if mode == 'finish' then
  if ARGV[7] ~= '' then
    if ARGV[8] ~= '' then
      redis.call('SET', ARGV[10] .. id, ARGV[7], 'PX', ARGV[8])
    else
      redis.call('SET', ARGV[10] .. id, ARGV[7])
    end
  end
  redis.call('DEL', ARGV[9] .. id, JOB .. id)
  redis.call('ZREM', ARGV[11], id)
  redis.call('ZREM', QUEUE, id)
  redis.call('HDEL', ROUTES, id)
  return 1
end
if mode == 'defer' and redis.call('ZSCORE', QUEUE, id) then
  redis.call('ZINCRBY', QUEUE, ARGV[6], id)
end
requeue(id)
return 1
