-- Store one response and evict the least recently used ones while the cache is over its size.
-- KEYS[1] entry  KEYS[2] index (sorted set: key -> last use)  KEYS[3] sizes (hash: key -> bytes, __total__)
-- ARGV[1] cache key  ARGV[2] body  ARGV[3] ttl in ms (0: none)  ARGV[4] max bytes  ARGV[5] entry key prefix
-- Evicted entries are named from ARGV[5]: the store is meant for one Redis, not a cluster.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
redis.call('HSET', KEYS[3], ARGV[1], #ARGV[2])
local total = redis.call('HINCRBY', KEYS[3], '__total__', #ARGV[2] - old)
local max = tonumber(ARGV[4])
while total > max do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local size = tonumber(redis.call('HGET', KEYS[3], oldest[1]) or '0')
  redis.call('HDEL', KEYS[3], oldest[1])
  redis.call('DEL', ARGV[5] .. oldest[1])
  total = redis.call('HINCRBY', KEYS[3], '__total__', -size)
end
return total
