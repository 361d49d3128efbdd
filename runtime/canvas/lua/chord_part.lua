-- Record one chord header task's result and, if it was the last one missing, claim the
-- chord's body for this worker: the keys and values of Celery 5.7's Redis backend, so that
-- Celery and celeriac workers can share a chord.
--
-- KEYS[1]  <group>.j   results, a sorted set of encoded [1, task id, state, result] scored
--                      by group index
-- KEYS[2]  <group>.t   tasks added to the header since it was sent (Celery's add_to_chord)
-- KEYS[3]  <group>.s   the header's size, set when the chord was applied
-- KEYS[4]  <group>.d   "<task id>:<group index>" of each result recorded: a redelivered
--                      task counts once, whatever it returned the second time
-- KEYS[5]  <group>     the saved group result, if any: only its expiry is refreshed
-- KEYS[6]  <group>.c   the body's claim: a worker's token while it publishes, then "done"
-- ARGV[1]  task id     ARGV[2]  the encoded result     ARGV[3]  group index (or "+inf")
-- ARGV[4]  expiry of .j .t .s .d in seconds, 0 for none
-- ARGV[5]  expiry of the saved group result in seconds, 0 for none
-- ARGV[6]  how long a claim lasts, in seconds     ARGV[7]  this worker's claim token
--
-- Returns {results recorded, .t, .s, 1 if this call claimed the body else 0}, or
-- {-1, 0, 0, 0} once the chord is done, so that a late duplicate cannot start it again.

local results, added, size, seen, saved, claim = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local expires, saved_expires = tonumber(ARGV[4]), tonumber(ARGV[5])

if redis.call('GET', claim) == 'done' then
    return {-1, 0, 0, 0}
end
if redis.call('SADD', seen, ARGV[1] .. ':' .. ARGV[3]) == 1 then
    redis.call('ZADD', results, ARGV[3], ARGV[2])
end
local recorded = redis.call('ZCARD', results)
if expires > 0 then
    for _, key in ipairs({results, added, size, seen}) do
        redis.call('EXPIRE', key, expires)
    end
    if saved_expires > 0 then
        redis.call('EXPIRE', saved, saved_expires)
    end
end
local extra = redis.call('GET', added)
local expected = redis.call('GET', size)
local claimed = 0
if expected and recorded == tonumber(expected) + tonumber(extra or 0) then
    if redis.call('SET', claim, ARGV[7], 'NX', 'EX', ARGV[6]) then
        claimed = 1
    end
end
return {recorded, extra, expected, claimed}
