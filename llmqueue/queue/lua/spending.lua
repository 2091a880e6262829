-- Spending limits (llmqueue.queue.spending): reserve a call's estimated price against every limit that
-- applies, or settle a call with its real cost. Not built on ready_lib: it touches no queue key.
-- KEYS: the day's hash, the month's hash, the held jobs' hash
-- ARGV[1] 'reserve' or 'settle'; ARGV[2] the model; ARGV[3] price (USD reserved)
-- ARGV[4..7] limits: day overall, day of the model, month overall, month of the model ('' for none)
-- ARGV[8], ARGV[9]: the day's and month's hash TTLs (s)
-- reserve: ARGV[10] job id, ARGV[11..14] what a hold by each limit records (JSON)
--   returns {'ok'} | {'wait', i} | {'spent', i, spent} with i the limit's number (1..4)
-- settle: ARGV[10] the real cost (USD), ARGV[11] the warning fraction
--   returns {spent of each limit (1..4)..., then the numbers of limits newly past the warning}
local SMALL = 1e-12
local model = ARGV[2]
local price = tonumber(ARGV[3])
local places = {
  {KEYS[1], ''}, {KEYS[1], ':' .. model}, {KEYS[2], ''}, {KEYS[2], ':' .. model},
}
local function number(key, field)
  return tonumber(redis.call('HGET', key, field) or '0') or 0
end
local function add(delta_reserved, delta_spent)
  for i = 1, 4 do
    local key, suffix = places[i][1], places[i][2]
    if delta_reserved ~= 0 then redis.call('HINCRBYFLOAT', key, 'reserved' .. suffix, delta_reserved) end
    if delta_spent ~= 0 then redis.call('HINCRBYFLOAT', key, 'spent' .. suffix, delta_spent) end
  end
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[9])
end

if ARGV[1] == 'reserve' then
  local waiting = nil
  for i = 1, 4 do
    local limit = tonumber(ARGV[3 + i])
    if limit then
      local key, suffix = places[i][1], places[i][2]
      local spent = number(key, 'spent' .. suffix)
      local reserved = number(key, 'reserved' .. suffix)
      if spent >= limit then
        redis.call('HSET', KEYS[3], ARGV[10], ARGV[10 + i])
        return {'spent', i, tostring(spent)}
      end
      if waiting == nil and reserved > SMALL and spent + reserved + price > limit then waiting = i end
    end
  end
  redis.call('HDEL', KEYS[3], ARGV[10])
  if waiting then return {'wait', waiting} end
  add(price, 0)
  return {'ok'}
end

local cost = tonumber(ARGV[10])
add(-price, cost)
local reply = {}
local newly = {}
for i = 1, 4 do
  local key, suffix = places[i][1], places[i][2]
  local spent = number(key, 'spent' .. suffix)
  reply[i] = tostring(spent)
  local limit = tonumber(ARGV[3 + i])
  if limit and spent >= limit * tonumber(ARGV[11]) then
    if redis.call('HSETNX', key, 'warned' .. (suffix == '' and ':*' or suffix), '1') == 1 then
      newly[#newly + 1] = i
    end
  end
end
for _, i in ipairs(newly) do reply[#reply + 1] = i end
return reply
