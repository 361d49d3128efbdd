-- Pop up to ARGV[2] messages from kombu queue lists and record each as unacknowledged, in
-- one atomic step: there is no moment at which a popped message exists only in the reply.
--
-- KEYS: the unacked hash, the unacked_index sorted set, then every queue's step lists
--       (queue 0 steps 1..S, queue 1 steps 1..S, ...), then every queue's .dead list.
-- ARGV: now, count, number of queues, number of steps, first queue to try (0-based), then
--       the queue names (the routing key recorded when a payload has no delivery_info).
-- Lists are tried step by step (all step-0 lists first, as kombu's BRPOP does) and, within
-- a step, queue by queue starting after the last queue served (round robin).
-- Returns {next first queue, {queue index, payload, delivery tag}...}. A payload that is not
-- a kombu envelope (JSON with properties.delivery_tag) goes to its .dead list byte for byte
-- and comes back without a tag, for the worker to log. A tag already claimed (a producer that
-- sent one message twice, or a hostile one that reuses tags) is recorded under a field of its
-- own, '<tag>#<n>': kombu would overwrite the first claim, and settling either copy would
-- then find the other's claim gone, losing it.
local now, count = ARGV[1], tonumber(ARGV[2])
local queues, steps, first = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
while #out < count do
  local payload, queue = false, 0
  for step = 1, steps do
    for offset = 0, queues - 1 do
      queue = (first + offset) % queues
      payload = redis.call('RPOP', KEYS[2 + queue * steps + step])
      if payload then break end
    end
    if payload then break end
  end
  if not payload then break end
  first = (queue + 1) % queues
  local ok, document = pcall(cjson.decode, payload)
  local properties = ok and type(document) == 'table' and document.properties
  local tag = type(properties) == 'table' and properties.delivery_tag
  if type(tag) == 'string' then
    if redis.call('HEXISTS', KEYS[1], tag) == 1 then
      local n = 1
      while redis.call('HEXISTS', KEYS[1], tag .. '#' .. n) == 1 do n = n + 1 end
      tag = tag .. '#' .. n
    end
    local exchange, routing_key = '', ARGV[6 + queue]
    local info = properties.delivery_info
    if type(info) == 'table' then
      if type(info.exchange) == 'string' then exchange = info.exchange end
      if type(info.routing_key) == 'string' then routing_key = info.routing_key end
    end
    -- kombu's value is JSON [payload, exchange, routing_key]; splice the payload in
    -- verbatim rather than re-encode it (cjson would round numbers and reorder keys).
    redis.call('HSET', KEYS[1], tag,
      '[' .. payload .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key) .. ']')
    redis.call('ZADD', KEYS[2], now, tag)
    out[#out + 1] = {queue, payload, tag}
  else
    redis.call('LPUSH', KEYS[2 + queues * steps + queue + 1], payload)
    out[#out + 1] = {queue, payload}
  end
end
return {first, out}
