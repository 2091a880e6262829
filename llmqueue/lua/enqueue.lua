-- Enqueue one job unless it is already queued, running or finished (duplicate ids run once).
-- KEYS[1] arq's job key   KEYS[2] llmqueue's result key   KEYS[3] the queue (sorted set)
-- ARGV[1] job id   ARGV[2] serialized arq job   ARGV[3] score (ms)   ARGV[4] job key ttl (ms)
-- returns 1 when enqueued, 0 when the id was already known
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
