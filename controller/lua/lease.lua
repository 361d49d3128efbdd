-- Take or keep the scheduler's leader lease.
-- KEYS[1] the lease, KEYS[2] the fencing counter
-- ARGV[1] this controller's id, ARGV[2] the lease's time to live in milliseconds
-- Returns this controller's fencing token while it holds the lease (a lapsed lease taken
-- again gets a new one), or 0 while another controller holds it.
local current = redis.call('GET', KEYS[1])
if current then
    local owner, token = string.match(current, '^(.*)|(%d+)$')
    if owner == ARGV[1] then
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return tonumber(token)
    end
    return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
