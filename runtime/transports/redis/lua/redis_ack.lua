-- Acknowledge a batch of deliveries: forget each one's unacked record, atomically.
--
-- KEYS: the unacked hash, the unacked_index sorted set.
-- ARGV: delivery tags.
-- Returns the tags that were no longer recorded: another consumer restored them after their
-- claim lapsed (an ack pushes nothing, so forgetting them is all there is to do).
local lapsed = {}
for i = 1, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 0 then
    lapsed[#lapsed + 1] = ARGV[i]
  end
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return lapsed
