-- A resumed batch's lane takes its turn again: its pause mark cleared, its ready jobs counted for an
-- autoscaler again, and listed at each priority where it has ready jobs, at the current virtual time
-- (a claim leaves a paused batch's lane out of its priority's turn; its jobs stay).
-- ARGV[4] the lane; returns how many priorities list it again
local lane, listed = ARGV[4], 0
redis.call('HDEL', BATCH_HASH .. lane, 'paused')
count_lane(lane, true)
for p = 0, 9 do
  if redis.call('EXISTS', PFX .. 'lane:' .. p .. ':' .. lane) == 1 then
    local vclock = redis.call('GET', PFX .. 'vclock:' .. p) or '0'
    listed = listed + redis.call('ZADD', PFX .. 'lanes:' .. p, 'NX', vclock, lane)
  end
end
return listed
