-- Move a schedule to its next tick: the one step that makes a tick fire exactly once.
-- KEYS[1] the lease, KEYS[2] the schedule's state hash, KEYS[3] the list of fires
-- ARGV[1] the lease value this controller holds ('<id>|<token>': the fence)
-- ARGV[2] the tick the caller believes is the last ('' for a schedule never seen)
-- ARGV[3] the new last tick, ARGV[4] the fire id ('' when nothing fires)
-- ARGV[5] the state to record: anchored, firing or skipped
-- ARGV[6] this controller's id, ARGV[7] now (ISO 8601), ARGV[8] the fire's JSON record,
-- ARGV[9] how many fires the list keeps
-- Returns 1 when moved, 0 when the schedule is not at ARGV[2] (someone moved it), -1 when
-- the caller no longer holds the lease (it must stop firing).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return -1
end
local last = redis.call('HGET', KEYS[2], 'last_due') or ''
if last ~= ARGV[2] then
    return 0
end
redis.call('HSET', KEYS[2], 'last_due', ARGV[3], 'fire', ARGV[4], 'state', ARGV[5],
           'by', ARGV[6], 'at', ARGV[7])
if ARGV[4] ~= '' then
    redis.call('LPUSH', KEYS[3], ARGV[8])
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[9]) - 1)
end
return 1
