-- Store a task result the way Celery's Redis backend does, atomically.
--
-- KEYS[1]  the result key, celery-task-meta-<task id>; also the PUBLISH channel
-- ARGV[1]  the encoded result record
-- ARGV[2]  time to live in seconds; 0 keeps the key forever
-- ARGV[3]  the serializer of the records: "json" or "msgpack"
--
-- Celery's backend GETs the current record and skips the write if it says SUCCESS, then
-- SETEXes and PUBLISHes: two round trips with a window between them. Here the check, the
-- write and the notification are one step. Returns 1 if written, 0 if a SUCCESS record was
-- kept.
--
-- The check reads only the record's first key: Celery and celeriac both write "status"
-- first. That costs nothing however large the result is, and works for msgpack records with
-- binary values, which Redis's bundled cmsgpack cannot decode.

local function is_success(record, serializer)
    if serializer == 'msgpack' then
        -- a fixmap (0x80-0x8f) or map16 (0xde + 2 bytes) header, then "status": "SUCCESS"
        return string.find(record, '^[\128-\143]\166status\167SUCCESS') ~= nil
            or string.find(record, '^\222..\166status\167SUCCESS') ~= nil
    end
    local prefix = '{"status": "SUCCESS"'
    return string.sub(record, 1, #prefix) == prefix
end

local current = redis.call('GET', KEYS[1])
if current and is_success(current, ARGV[3]) then
    return 0
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
