-- Record a run's new state in the run registry, unless it would go back.
-- KEYS[1] the run's hash, KEYS[2] every run by last update, KEYS[3] queued runs by queue time,
-- KEYS[4] started runs by start time
-- ARGV[1] the state, ARGV[2] its rank (queued 0, received 1, started 2, ended 3),
-- ARGV[3] the attempt (the message's retries), ARGV[4] now (Unix seconds),
-- ARGV[5] how long the record is kept (seconds), ARGV[6] the task id,
-- ARGV[7] the state the run must be in ('' for any), ARGV[8...] field, value, ...
-- Without ARGV[7], a state applies unless the run is at a later attempt, or at a later (or
-- ended) state of the same attempt: a late 'queued' never hides 'started', a redelivery after
-- an end never reopens it. With ARGV[7] it applies exactly when the run is in that state (the
-- controller's moves: queued -> skipped, started -> queued or lost).
-- Returns {1 if applied else 0, the state before}.
local previous = redis.call('HGET', KEYS[1], 'state') or ''
local attempt, rank = tonumber(ARGV[3]), tonumber(ARGV[2])
if ARGV[7] ~= '' then
    if previous ~= ARGV[7] then
        return {0, previous}
    end
else
    local was_attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '-1')
    local was_rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
    if attempt < was_attempt or (attempt == was_attempt and
            (rank < was_rank or was_rank == 3)) then
        return {0, previous}
    end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'rank', rank, 'attempt', attempt,
           'updated_at', ARGV[4], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
if ARGV[1] == 'queued' then
    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
else
    redis.call('ZREM', KEYS[3], ARGV[6])
end
if ARGV[1] == 'started' then
    redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6])
else
    redis.call('ZREM', KEYS[4], ARGV[6])
end
return {1, previous}
