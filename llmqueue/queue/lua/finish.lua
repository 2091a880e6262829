-- Store a job's final result once, wake its waiters, and add it to its batch's totals.
-- KEYS[1] result  KEYS[2] done list  KEYS[3] state hash  KEYS[4] errors list
-- KEYS[5] batch hash (or "" when the job has no batch)  KEYS[6] producer inbox (or "")
-- ARGV[1] result JSON  ARGV[2] ttl seconds  ARGV[3] job id  ARGV[4] status
-- ARGV[5] cost (USD)  ARGV[6] prompt tokens  ARGV[7] completion tokens  ARGV[8] 1 if a call was in flight
-- ARGV[9] 1 if the job was waiting for a retry (it leaves that count)
-- ARGV[10] 1 if the job ends on a 429 (retried 429s were counted as they happened)
-- ARGV[11] 1 if the result came from the response cache
-- KEYS[7..13] (all "" to skip) arq's job, in-progress and retry keys, arq's queue, the claimed set,
-- the routes hash and arq's abort set: the run's claim ends here too (as arq's finish_job would end it)
-- ARGV[12] the batch id; KEYS[14..] (only with a batch) the batch's own keys (keys.batch_keys), then the
-- set of all batches: they are kept for result_ttl (ARGV[2]) after the batch's last job finished, as
-- its results are; while it has jobs left they are only ever kept longer, never shorter
-- returns 1 when stored, 0 when the job already had a result (nothing is changed then)
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[2])
if KEYS[6] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[3])
  redis.call('EXPIRE', KEYS[6], 86400)
end
redis.call('DEL', KEYS[3], KEYS[4])
if KEYS[5] ~= '' then
  redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
  redis.call('HINCRBYFLOAT', KEYS[5], 'cost', ARGV[5])
  redis.call('HINCRBY', KEYS[5], 'prompt_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[5], 'completion_tokens', ARGV[7])
  redis.call('HINCRBY', KEYS[5], 'tokens', ARGV[6] + ARGV[7])
  if ARGV[8] == '1' then redis.call('HINCRBY', KEYS[5], 'running', -1) end
  if ARGV[9] == '1' then redis.call('HINCRBY', KEYS[5], 'retry_waiting', -1) end
  if ARGV[10] == '1' then redis.call('HINCRBY', KEYS[5], 'rate_limited', 1) end
  if ARGV[11] == '1' then redis.call('HINCRBY', KEYS[5], 'cached', 1) end
  -- A finished batch's elapsed time and throughput end with its last job, not at the next look; Redis's
  -- clock, as the batch's created_at (workers on other hosts have clocks of their own).
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[5], 'last_finished_at', now[1] + now[2] / 1000000)
end
if KEYS[7] ~= '' then
  redis.call('DEL', KEYS[7], KEYS[8], KEYS[9])
  redis.call('ZREM', KEYS[10], ARGV[3])
  redis.call('ZREM', KEYS[11], ARGV[3])
  redis.call('HDEL', KEYS[12], ARGV[3])
  redis.call('ZREM', KEYS[13], ARGV[3])
end
if KEYS[5] ~= '' and #KEYS > 13 then
  local counts = redis.call('HMGET', KEYS[5], 'total', 'succeeded', 'failed', 'cancelled')
  local finished = (tonumber(counts[2]) or 0) + (tonumber(counts[3]) or 0) + (tonumber(counts[4]) or 0)
  local done = tonumber(counts[1]) ~= nil and finished >= tonumber(counts[1])
  local all = KEYS[#KEYS]
  for i = 14, #KEYS do
    if done and i < #KEYS then
      redis.call('EXPIRE', KEYS[i], ARGV[2])
    else
      redis.call('EXPIRE', KEYS[i], ARGV[2], 'NX')
      redis.call('EXPIRE', KEYS[i], ARGV[2], 'GT')
    end
  end
  -- The set of all batches outlives a finished one only while other batches are listed in it.
  if done and redis.call('ZCARD', all) == 1 and redis.call('ZSCORE', all, ARGV[12]) then
    redis.call('EXPIRE', all, ARGV[2])
  end
end
return 1
