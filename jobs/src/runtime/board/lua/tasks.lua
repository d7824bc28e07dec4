-- Data and metadata of some tasks of one queue, in the shape apalis-redis's own
-- `deserialize_with_meta` decodes: {data_list, {{id, field, value, ...}, ...}}. Tasks deleted
-- meanwhile (pruned) are left out. A scheduled task's metadata gains `run_at` (its score).
-- KEYS[1]: data hash   KEYS[2]: scheduled zset
-- ARGV[1]: the queue (prefix of the per-task meta hashes)   ARGV[2..]: task ids
local data_list, meta_list = {}, {}
for i = 2, #ARGV do
    local id = ARGV[i]
    local data = redis.call('hget', KEYS[1], id)
    local meta = redis.call('hgetall', ARGV[1] .. ':meta:' .. id)
    if data and #meta > 0 then
        local run_at = redis.call('zscore', KEYS[2], id)
        if run_at then
            table.insert(meta, 'run_at')
            table.insert(meta, run_at)
        end
        table.insert(meta, 1, id)
        table.insert(data_list, data)
        table.insert(meta_list, meta)
    end
end
return {data_list, meta_list}
