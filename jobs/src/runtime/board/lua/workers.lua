-- The workers of one queue that heartbeat recently, with the metadata apalis-redis 1.0.0 writes
-- for them (under `{queue}:workers:metadata:{name}`, which its own listing does not read).
-- KEYS[1]: workers zset (name -> last heartbeat, Unix seconds)
-- ARGV[1]: the queue   ARGV[2]: oldest heartbeat still counted as alive
-- Returns {name, last_heartbeat, backend_name, service, ...}.
local out = {}
for _, name in ipairs(redis.call('zrangebyscore', KEYS[1], ARGV[2], '+inf')) do
    local seen = redis.call('zscore', KEYS[1], name)
    local meta = redis.call('hmget', ARGV[1] .. ':workers:metadata:' .. name, 'backend_name', 'service')
    table.insert(out, name)
    table.insert(out, seen)
    table.insert(out, meta[1] or '')
    table.insert(out, meta[2] or '')
end
return out
