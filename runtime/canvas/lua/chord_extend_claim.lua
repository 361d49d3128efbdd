-- Keep the claim on a chord's body while this worker publishes it, or take it back if it
-- lapsed and the chord is still pending (its size key is there).
--
-- KEYS[1]  <group>.c   the claim     KEYS[2]  <group>.s   the header's size
-- ARGV[1]  this worker's token       ARGV[2]  the claim's new lifetime, in seconds
--
-- Returns 1 if this worker holds the claim now, else 0.

local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
    return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if not current and redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
        return 1
    end
end
return 0
