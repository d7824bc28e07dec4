-- Counts one queue's tasks by status, from the keys apalis-redis 1.0.0 really writes.
-- KEYS[1]: active list     KEYS[2]: scheduled zset   KEYS[3]: workers zset
-- KEYS[4]: done set        KEYS[5]: dead set
-- ARGV[1]: the queue (prefix of the per-worker inflight sets and per-task meta hashes)
-- Returns {pending, running, failed, killed, done}.
local queue = ARGV[1]
local function status(id)
    return redis.call('hget', queue .. ':meta:' .. id, 'status')
end

-- Waiting to run (the active list and the scheduled set): failed ones wait for a retry.
local pending, failed, killed = 0, 0, 0
local waiting = redis.call('lrange', KEYS[1], 0, -1)
for _, id in ipairs(redis.call('zrange', KEYS[2], 0, -1)) do
    table.insert(waiting, id)
end
for _, id in ipairs(waiting) do
    if status(id) == 'Failed' then failed = failed + 1 else pending = pending + 1 end
end

-- Running: what each registered worker holds.
local running = 0
for _, worker in ipairs(redis.call('zrange', KEYS[3], 0, -1)) do
    running = running + redis.call('scard', queue .. ':inflight:' .. worker)
end

-- Finished for good: killed (aborted) or failed on every attempt.
for _, id in ipairs(redis.call('smembers', KEYS[5])) do
    if status(id) == 'Killed' then killed = killed + 1 else failed = failed + 1 end
end

return {pending, running, failed, killed, redis.call('scard', KEYS[4])}
