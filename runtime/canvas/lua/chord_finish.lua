-- After the body is published: drop a chord's bookkeeping and mark it done, if this worker
-- still holds the claim (otherwise the data is left to expire).
--
-- KEYS[1]  <group>.c   KEYS[2..5]  <group>.j .t .s .d
-- ARGV[1]  this worker's token       ARGV[2]  how long "done" is kept, in seconds
--
-- Returns 1 if cleaned up, 0 if the claim was lost.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
end
return 1
