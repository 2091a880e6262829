-- Jobs the limiter can admit sooner than it told them: moved earlier, never later, in arq's queue and
-- among the delayed, while they wait there (a job claimed or finished since is left alone).
-- ARGV[4..] pairs: job id, its new due time (ms)
for j = 4, #ARGV, 2 do
  local id, score = ARGV[j], ARGV[j + 1]
  if redis.call('ZSCORE', DELAYED, id) then
    redis.call('ZADD', QUEUE, 'XX', 'LT', score, id)
    redis.call('ZADD', DELAYED, 'XX', 'LT', score, id)
  end
end
return 1
