-- Take queued jobs out of the queue, for a cancel: each job that has no result and that no worker holds
-- (a running job finishes; a job a worker claims is no longer queued), atomically with the claim.
-- ARGV[4] llmqueue's result key prefix  ARGV[5] arq's retry key prefix  ARGV[6..] job ids
-- returns {id, payload, ...} for each job taken out: its arq payload ('' if it had expired)
local RESULT, RETRY = ARGV[4], ARGV[5]
local out = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', RESULT .. id) == 0 and redis.call('EXISTS', IN_PROGRESS .. id) == 0
      and redis.call('ZREM', QUEUE, id) == 1 then
    local route = redis.call('HGET', ROUTES, id)
    if route then
      local p, _, lane = parse_route(route)
      if p then
        local lane_key = PFX .. 'lane:' .. p .. ':' .. lane
        redis.call('ZREM', lane_key, id)
        if redis.call('EXISTS', lane_key) == 0 then redis.call('ZREM', PFX .. 'lanes:' .. p, lane) end
      end
      redis.call('HDEL', ROUTES, id)
    end
    redis.call('ZREM', DELAYED, id)
    out[#out + 1] = id
    out[#out + 1] = redis.call('GET', JOB .. id) or ''
    redis.call('DEL', JOB .. id, RETRY .. id)
  end
end
return out
