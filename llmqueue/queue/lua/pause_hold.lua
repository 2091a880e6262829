-- Hold a job for a pause still in force (llmqueue.queue.pauses): record it among the held jobs, in the
-- same step as the pause is checked, so a resume that comes after this step finds it and wakes it.
-- ARGV[1] the held jobs' hash  ARGV[2] job id  ARGV[3] its record (JSON)
-- ARGV[4] the hash that marks the pause  ARGV[5] its field (a batch hash's 'paused', or the scope)
-- returns 1 when held, 0 when the pause has ended meanwhile
if redis.call('HEXISTS', ARGV[4], ARGV[5]) == 0 then return 0 end
redis.call('HSET', ARGV[1], ARGV[2], ARGV[3])
return 1
