-- A batch paused: marked (the claim then leaves its lane out of the turn), and its ready jobs leave the
-- set an autoscaler counts, as no worker would take them (resume_lane.lua counts them again).
-- ARGV[4] the lane (the batch id)  ARGV[5] since when (Unix seconds); returns how many left the count
local lane = ARGV[4]
redis.call('HSET', BATCH_HASH .. lane, 'paused', ARGV[5])
PAUSED_LANES[lane] = true
return count_lane(lane, false)
