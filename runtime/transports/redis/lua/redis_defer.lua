-- Move a delivery from the unacked bookkeeping into celeriac's delay store, atomically, if it
-- is still recorded as ours: nothing is ever both held and delayed, or neither.
--
-- KEYS: the unacked hash, the unacked_index sorted set, the delay store's sorted set (score:
--       when due) and its hash of messages.
-- ARGV: delivery tag, due time (unix seconds), the store's id for it, the list key to push the
--       message onto when due, the payload.
-- Returns 1 if moved, 0 if the delivery was no longer ours (another consumer restored it).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4] .. '\0' .. ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
