-- Store task results the way Celery's Redis backend does, each atomically, in order.
--
-- KEYS[i]      the result key, celery-task-meta-<task id>; also the PUBLISH channel
-- ARGV[1]      the serializer of the records: "json" or "msgpack"
-- ARGV[2i]     the encoded result record for KEYS[i]
-- ARGV[2i + 1] its time to live in seconds; 0 keeps the key forever
--
-- Celery's backend GETs the current record and skips the write if it says SUCCESS, then
-- SETEXes and PUBLISHes: two round trips with a window between them. Here the check, the
-- write and the notification are one step, and one call carries every result the worker
-- had to store in one turn of its event loop. Returns, per key, 1 if written, 0 if a
-- SUCCESS record was kept.
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

local function store(key, record, ttl, serializer)
    local current = redis.call('GET', key)
    if current and is_success(current, serializer) then
        return 0
    end
    if ttl > 0 then
        redis.call('SET', key, record, 'EX', ttl)
    else
        redis.call('SET', key, record)
    end
    redis.call('PUBLISH', key, record)
    return 1
end

local written = {}
for i = 1, #KEYS do
    written[i] = store(KEYS[i], ARGV[2 * i], tonumber(ARGV[2 * i + 1]), ARGV[1])
end
return written
