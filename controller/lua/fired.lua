-- Record that a fire's message is published.
-- KEYS[1] the schedule's state hash; ARGV[1] the fire id
-- Returns 1 if the fire was the one under way, 0 otherwise.
if redis.call('HGET', KEYS[1], 'fire') == ARGV[1] and
   redis.call('HGET', KEYS[1], 'state') == 'firing' then
    redis.call('HSET', KEYS[1], 'state', 'fired')
    return 1
end
return 0
