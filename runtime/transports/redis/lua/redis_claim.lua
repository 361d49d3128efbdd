-- Pop up to ARGV[2] messages from kombu queue lists and record each as unacknowledged, in
-- one atomic step: there is no moment at which a popped message exists only in the reply.
--
-- KEYS: the unacked hash, the unacked_index sorted set, then every queue's step lists
--       (queue 0 steps 1..S, queue 1 steps 1..S, ...), then every queue's .dead list.
-- ARGV: now, count, number of queues, number of steps, first queue to try (0-based), the
--       largest payload a worker reads and the largest body it runs (bytes), then the queue
--       names (the routing key recorded when a payload has no delivery_info).
-- Lists are tried step by step (all step-0 lists first, as kombu's BRPOP does) and, within
-- a step, queue by queue starting after the last queue served (round robin).
-- Returns {next first queue, item...}: {queue index, payload, delivery tag} for a claimed
-- message, {queue index, why} for one moved to its .dead list here instead, so the worker
-- never reads it:
-- * a payload, or the body it carries, over the size limit, with the reason added to its
--   headers as the worker's dead-lettering would (x-celeriac-reason, x-celeriac-queue),
--   every other byte kept;
-- * a payload that is not a kombu envelope (JSON with properties.delivery_tag), byte for byte.
-- A tag already claimed (a producer that sent one message twice, or a hostile one that reuses
-- tags) is recorded under a field of its own, '<tag>#<n>': kombu would overwrite the first
-- claim, and settling either copy would then find the other's claim gone, losing it.

-- The positions of the '{' and '}' around the value of the top-level "headers" member of the
-- JSON text s, or nil. It jumps from one structural character to the next with string.find,
-- so a multi-megabyte base64 body costs one scan in C, and it never decodes the document:
-- cjson would renumber floats and turn [] into {} on the way back.
local function headers_span(s)
  local i = s:find('%S')
  if not i or s:byte(i) ~= 123 then return nil end -- '{'
  local depth, short, key, open = 0, nil, nil, nil
  while true do
    i = s:find('[\\"{}%[%]:]', i)
    if not i then return nil end
    local c = s:byte(i)
    if c == 34 then -- '"': skip the string, escapes included
      local j = i + 1
      while true do
        j = s:find('[\\"]', j)
        if not j then return nil end
        if s:byte(j) == 92 then j = j + 2 else break end
      end
      short = (depth == 1 and j - i == 8) and s:sub(i + 1, j - 1) or nil
      i = j
    elseif c == 58 then -- ':'
      if depth == 1 then key = short end
    elseif c == 123 or c == 91 then -- '{' '['
      depth = depth + 1
      if depth == 2 and c == 123 and key == 'headers' then open = i end
    elseif c == 125 or c == 93 then -- '}' ']'
      if depth == 2 and open then return open, i end
      depth = depth - 1
      if depth == 0 then return nil end
    else
      return nil -- a backslash outside a string: not JSON
    end
    i = i + 1
  end
end

-- The size in bytes of a body once decoded as the worker decodes it, or nil if that is not
-- known without decoding it (the worker then finds out, and dead-letters it if need be).
local function body_size(body, encoding)
  if type(body) ~= 'string' then return nil end
  if encoding == nil or encoding == cjson.null then return #body end -- UTF-8, as cjson gives it
  if encoding ~= 'base64' or #body % 4 ~= 0 then return nil end
  local padding = (body:sub(-2) == '==' and 2) or (body:sub(-1) == '=' and 1) or 0
  return #body / 4 * 3 - padding
end

-- payload with the reason and queue added as the last members of its headers (the last of
-- duplicate names wins in JSON readers), or unchanged if it has no headers object.
local function with_reason(payload, reason, queue)
  local open, close = headers_span(payload)
  if not open then return payload end
  local sep = payload:sub(open + 1, close - 1):find('%S') and ', ' or ''
  return payload:sub(1, close - 1) .. sep .. '"x-celeriac-reason": ' .. cjson.encode(reason)
    .. ', "x-celeriac-queue": ' .. cjson.encode(queue) .. payload:sub(close)
end

local now, count = ARGV[1], tonumber(ARGV[2])
local queues, steps, first = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local largest, largest_body = tonumber(ARGV[6]), tonumber(ARGV[7])
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
  local dead, name = KEYS[2 + queues * steps + queue + 1], ARGV[8 + queue]
  local document, properties, tag, size = nil, nil, nil, nil
  if #payload <= largest then
    local ok, decoded = pcall(cjson.decode, payload)
    if ok and type(decoded) == 'table' then document = decoded end
    properties = document and document.properties
    if type(properties) == 'table' then
      tag = properties.delivery_tag
      size = body_size(document.body, properties.body_encoding)
    end
  end
  -- Over a limit: the sentence the worker's own check writes (protocol.LimitExceeded).
  local why = nil
  if #payload > largest then
    why = string.format('unreadable: envelope: size %d is over the limit of %d',
      #payload, largest)
  elseif size and size > largest_body then
    why = string.format('unreadable: body: size %d is over the limit of %d', size, largest_body)
  end
  if why then
    redis.call('LPUSH', dead, with_reason(payload, why, name))
    out[#out + 1] = {queue, why}
  elseif type(tag) == 'string' then
    if redis.call('HEXISTS', KEYS[1], tag) == 1 then
      local n = 1
      while redis.call('HEXISTS', KEYS[1], tag .. '#' .. n) == 1 do n = n + 1 end
      tag = tag .. '#' .. n
    end
    local exchange, routing_key = '', name
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
    redis.call('LPUSH', dead, payload)
    out[#out + 1] = {queue, 'not a kombu envelope'}
  end
end
return {first, out}
