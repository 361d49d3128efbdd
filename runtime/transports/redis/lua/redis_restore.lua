-- Put back one stale delivery (its claim older than the visibility timeout), atomically.
--
-- KEYS: the unacked hash, the unacked_index sorted set, then the lists to RPUSH ARGV[4] onto
--       (the consuming end: a restored message is the next one served, as in kombu).
-- ARGV: delivery tag, the newest stale score, the unacked value read before, the payload.
-- Returns 1 if restored, 0 if its owner renewed or settled it meanwhile.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if value ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[4])
end
return 1
