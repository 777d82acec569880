-- recover: write back the hot state of a run that Redis lost, rebuilt from the audit store
-- (orchestrator/engine/recover.py), with its events: attempt_lost for each attempt that was
-- running, then run_recovered. Refused ('present') when Redis knows the run, unless forced:
-- then the run's keys are replaced, the epoch moves past the one in Redis and seq never goes
-- back.
-- KEYS: run, steps, attempts, completed, stream, runs, live, runs of its workflow, sla watch,
--   controlled, control channel, items, map data, item attempts
-- ARGV: run_id, now, maxlen, force ('1' | '0'), run fields (JSON object of texts),
--   step fields (JSON object of texts, '<step>|<field>'), attempt records (JSON list of JSON
--   texts), completion order (JSON list), lost attempts (JSON list of [step, data JSON text]),
--   run_recovered data (JSON object; the epoch is added), created_at, sla ('1' | '0'), item
--   fields (JSON object of texts, '<step>[<i>]|<field>': the items of mapped steps; a mapped
--   step's expansion keeps the settled ones, as after a pause), item attempt records (JSON
--   list of JSON texts)
-- Returns {'ok', status before ('' when absent), epoch} or {'present', status, '0'}.
-- include: common.lua
local run_key, steps, attempts, completed, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local fields = cjson.decode(ARGV[5])
local epoch, seq = tonumber(fields['epoch']), tonumber(fields['seq'])
local before = redis.call('HGET', run_key, 'status')
if before then
  if ARGV[4] ~= '1' then return {'present', before, '0'} end
  epoch = math.max(epoch, tonumber(redis.call('HGET', run_key, 'epoch') or '0') + 1)
  seq = math.max(seq, tonumber(redis.call('HGET', run_key, 'seq') or '0'))
  redis.call('DEL', run_key, steps, attempts, completed, KEYS[12], KEYS[13], KEYS[14])
end
fields['epoch'] = tostring(epoch)
fields['seq'] = tostring(seq)

-- HSET in slices: a long argument list would overflow Lua's stack in unpack.
local function hset_all(key, map)
  local args = {}
  for k, v in pairs(map) do
    table.insert(args, k); table.insert(args, v)
    if #args >= 200 then redis.call('HSET', key, unpack(args)); args = {} end
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end
hset_all(run_key, fields)
hset_all(steps, cjson.decode(ARGV[6]))
hset_all(KEYS[12], cjson.decode(ARGV[13] or '{}'))
for _, rec in ipairs(cjson.decode(ARGV[7])) do redis.call('RPUSH', attempts, rec) end
for _, rec in ipairs(cjson.decode(ARGV[14] or '[]')) do redis.call('RPUSH', KEYS[14], rec) end
for _, sid in ipairs(cjson.decode(ARGV[8])) do redis.call('RPUSH', completed, sid) end
local created = ARGV[11]
redis.call('ZADD', KEYS[6], created, run_id)
redis.call('ZADD', KEYS[7], created, run_id)
redis.call('ZADD', KEYS[8], created, run_id)
if ARGV[12] == '1' then redis.call('SADD', KEYS[9], run_id) end
for _, lost in ipairs(cjson.decode(ARGV[9])) do
  emit(run_key, stream, maxlen, run_id, 'attempt_lost', lost[1], 'LOST', now, lost[2])
end
local data = cjson.decode(ARGV[10])
data['epoch'] = epoch
emit(run_key, stream, maxlen, run_id, 'run_recovered', '', fields['status'], now, cjson.encode(data))
controlled(KEYS[10], KEYS[11], run_id, 'restart', now)
return {'ok', before or '', tostring(epoch)}
