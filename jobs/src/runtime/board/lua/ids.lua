-- The ids of one queue's tasks with a status, from the keys apalis-redis 1.0.0 really writes.
-- KEYS[1]: active list     KEYS[2]: scheduled zset   KEYS[3]: workers zset
-- KEYS[4]: done set        KEYS[5]: dead set         KEYS[6]: data hash
-- ARGV[1]: the queue (prefix of the per-worker inflight sets and per-task meta hashes)
-- ARGV[2]: Pending | Running | Done | Failed | Killed, or '' for every task still stored
local queue, want = ARGV[1], ARGV[2]
local function status(id)
    return redis.call('hget', queue .. ':meta:' .. id, 'status')
end

if want == '' then
    return redis.call('hkeys', KEYS[6])
elseif want == 'Done' then
    return redis.call('smembers', KEYS[4])
end

local ids = {}
if want == 'Running' then
    for _, worker in ipairs(redis.call('zrange', KEYS[3], 0, -1)) do
        for _, id in ipairs(redis.call('smembers', queue .. ':inflight:' .. worker)) do
            table.insert(ids, id)
        end
    end
elseif want == 'Pending' or want == 'Failed' then
    -- Waiting to run (the active list and the scheduled set): failed ones wait for a retry.
    local waiting = redis.call('lrange', KEYS[1], 0, -1)
    for _, id in ipairs(redis.call('zrange', KEYS[2], 0, -1)) do
        table.insert(waiting, id)
    end
    for _, id in ipairs(waiting) do
        if (status(id) == 'Failed') == (want == 'Failed') then table.insert(ids, id) end
    end
end
if want == 'Failed' then
    -- Failed on every attempt.
    for _, id in ipairs(redis.call('smembers', KEYS[5])) do
        if status(id) ~= 'Killed' then table.insert(ids, id) end
    end
elseif want == 'Killed' then
    for _, id in ipairs(redis.call('smembers', KEYS[5])) do
        if status(id) == 'Killed' then table.insert(ids, id) end
    end
end
return ids
