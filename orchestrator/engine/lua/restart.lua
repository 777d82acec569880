-- restart: a new dispatch of the run (resume, retry, retry of the compensation, re-dispatch):
-- if the move may take the run to target, bump the epoch, set the status, reset the given
-- steps to PENDING (their start and end times cleared), clear the given run fields, and keep
-- the run's keys and live entry.
-- KEYS: run, steps, stream, settled channel, completed, attempts, controlled, control channel,
--   live set
-- A retry (or retry of the compensation) of a run of a workflow with a concurrency limit takes
-- a slot in its group again, or is refused ('full') when every slot is held.
-- ARGV: run_id, now, maxlen, move, target, reset_json (step ids), clear_json (run fields),
--   data_json (of the run_status_changed event; the new epoch is added), run key head and
--   tail, the group's limit, workflow, key and index ('' when the run has no group),
--   items_json (optional: {mapped step: 'all' | 'unfinished'}: its items reset to PENDING,
--   every one, or those not COMPLETED)
-- Returns {'ok' | 'refused' | 'gone' | 'full', status before, new epoch ('0' unless ok)}.
-- include: common.lua
-- include: conc.lua
local run_key, steps, stream = KEYS[1], KEYS[2], KEYS[3]
local run_id, now, maxlen, move, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if move == 'cancel' then return {'refused', redis.call('HGET', run_key, 'status') or '', '0'} end
local group = redis.call('HGET', run_key, 'conc_group')
if group and ARGV[14] ~= '' and (move == 'retry' or move == 'retry_compensation') then
  local st0 = redis.call('HGET', run_key, 'status')
  if st0 and run_may(move, st0, target) and not redis.call('ZSCORE', group .. ':active', run_id) then
    conc_reclaim(group, ARGV[9], ARGV[10])
    if redis.call('ZCARD', group .. ':active') >= tonumber(ARGV[11]) then return {'full', st0, '0'} end
    redis.call('ZADD', group .. ':active', now, run_id)
    redis.call('HSET', group, 'limit', ARGV[11], 'workflow', ARGV[12], 'key', ARGV[13], 'index', ARGV[14])
    redis.call('SADD', ARGV[14], group)
  end
end
local st, epoch = new_epoch(run_key, move, target)
if not st then return epoch end
for _, f in ipairs(cjson.decode(ARGV[7])) do redis.call('HDEL', run_key, f) end
-- A run paused before any step began has no start yet: it starts now, when it runs again (the
-- audit store takes the same time, from the RUNNING event below).
if target == 'RUNNING' and redis.call('HEXISTS', run_key, 'started_at') == 0 then
  redis.call('HSET', run_key, 'started_at', now)
end
local before = {}
for _, sid in ipairs(cjson.decode(ARGV[6])) do
  local ss = redis.call('HGET', steps, sid .. '|status')
  before[sid] = tonumber(redis.call('HGET', steps, sid .. '|attempts') or '0')
  if is_settled(ss) then redis.call('HINCRBY', run_key, 'settled', -1) end
  move_step(steps, sid, ss, 'PENDING')
  -- A reset step starts afresh: its start and end are its next attempt's (the attempts list
  -- keeps the history); the attempt count goes on.
  redis.call('HDEL', steps, sid .. '|output', sid .. '|error', sid .. '|traceback',
             sid .. '|started_at', sid .. '|finished_at',
             sid .. '|compensation_error', sid .. '|compensation_traceback', sid .. '|compensation_output')
  redis.call('LREM', KEYS[5], 0, sid)
end
if ARGV[15] and ARGV[15] ~= '' then
  local items, map = run_key .. ':items', run_key .. ':map'
  for sid, which in pairs(cjson.decode(ARGV[15])) do
    local n = tonumber(redis.call('HGET', map, sid .. '|n') or '0')
    for i = 0, n - 1 do
      local id = sid .. '[' .. i .. ']'
      local ss = redis.call('HGET', items, id .. '|status')
      if ss and ss ~= 'PENDING' and (which == 'all' or ss ~= 'COMPLETED') then
        move_step(items, id, ss, 'PENDING')
        redis.call('HDEL', items, id .. '|output', id .. '|error', id .. '|traceback',
                   id .. '|started_at', id .. '|finished_at', id .. '|compensation_error',
                   id .. '|compensation_traceback', id .. '|compensation_output')
        redis.call('LREM', KEYS[5], 0, id)
      end
    end
  end
end
for i = 1, 6 do if i ~= 3 and i ~= 4 then redis.call('PERSIST', KEYS[i]) end end
for _, k in ipairs({':items', ':items:attempts', ':map'}) do redis.call('PERSIST', run_key .. k) end
local data = cjson.decode(ARGV[8])
data['epoch'] = epoch
-- Each reset step's attempts before this restart: the audit store takes a reset step's start
-- from its later attempts only (orchestrator/audit/projection.py), whatever order events arrive in.
if next(before) ~= nil then data['attempts_before'] = before end
emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', target, now, cjson.encode(data))
controlled(KEYS[7], KEYS[8], run_id, 'restart', now)
redis.call('ZADD', KEYS[9], now, run_id)  -- live again (a retry of a finished run): the watchdog
redis.call('PUBLISH', KEYS[4], target)
return {'ok', st, tostring(epoch)}
