-- Push the delayed messages due by ARGV[1] back onto their lists, at the consuming end (they
-- are due: they go before what waits), atomically: each is moved exactly once however many
-- workers run this.
--
-- KEYS: the delay store's sorted set and its hash of messages.
-- ARGV: the due-by time (unix seconds), the most to move.
-- Returns {how many were moved, the next due time or false}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  local entry = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  if entry then
    local split = string.find(entry, '\0', 1, true)
    redis.call('RPUSH', string.sub(entry, 1, split - 1), string.sub(entry, split + 1))
  end
end
local following = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, following[2] or false}
