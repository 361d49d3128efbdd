-- Settle a delivery if it is still recorded as unacknowledged, atomically.
--
-- KEYS: the unacked hash, the unacked_index sorted set, then the lists to push ARGV[3] onto
--       (none for an ack).
-- ARGV: delivery tag, 'LPUSH' or 'RPUSH', payload.
-- Returns 1 if the delivery was recorded (and is now settled), 0 if it no longer was: another
-- consumer restored it after its claim lapsed, and pushing it again would duplicate it.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  redis.call(ARGV[2], KEYS[i], ARGV[3])
end
return 1
