-- Give the lease up, only if this controller still holds it with this token.
-- KEYS[1] the lease; ARGV[1] '<controller id>|<token>'
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
