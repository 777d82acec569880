-- common.lua: the shared part of every script that changes a run, included by a line
-- "-- include: common.lua" (expanded when RunState loads the script).
-- First the constants rendered from Python at load time: the transition tables of
-- orchestrator/engine/states.py (run_may, step_may, is_settled) and CONTROL_WINDOW.
-- include: constants

-- Append one event to the stream with the run's next sequence number; returns the seq.
local function emit(run_key, stream, maxlen, run_id, etype, step, status, ts, data)
  local seq = redis.call('HINCRBY', run_key, 'seq', 1)
  local args = {stream}
  if tonumber(maxlen) > 0 then
    table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, maxlen)
  end
  for _, v in ipairs({'*', 'run', run_id, 'seq', seq, 'type', etype, 'step', step,
                      'status', status, 'ts', ts, 'data', data}) do table.insert(args, v) end
  redis.call('XADD', unpack(args))
  return seq
end

-- An operator action or a failure changed what may start in the run: record it in the
-- "controlled" set (kept CONTROL_WINDOW seconds) and tell every worker process
-- (workers/watch.py), so none starts a step of the run before asking Redis first.
local function controlled(zkey, channel, run_id, action, now, flag)
  redis.call('ZADD', zkey, now, run_id)
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', tonumber(now) - CONTROL_WINDOW)
  redis.call('PUBLISH', channel, run_id .. ' ' .. action .. ' ' .. (flag or ''))
end

-- A RUNNING step whose lease is gone lost its attempt (its worker died, or was cut off from
-- Redis too long); a new attempt is about to take over. Say so once per lost attempt, so the
-- audit store closes it instead of keeping it RUNNING for ever.
local function lost_attempt(run_key, steps, stream, maxlen, run_id, step, now)
  local n = redis.call('HGET', steps, step .. '|attempts') or '0'
  if redis.call('HGET', steps, step .. '|lost') == n then return end
  redis.call('HSET', steps, step .. '|lost', n)
  emit(run_key, stream, maxlen, run_id, 'attempt_lost', step, 'LOST', now, cjson.encode({
    attempt = tonumber(n), worker = redis.call('HGET', steps, step .. '|worker') or '',
    task_id = redis.call('HGET', steps, step .. '|task_id') or '',
    started_at = tonumber(redis.call('HGET', steps, step .. '|attempt_started_at') or ''),
    reason = 'its worker stopped renewing the lease (killed, or cut off from Redis) before it finished'}))
end

-- batch: JSON list of [type, step, status, ts, data]. data is an object (encoded here), or the
-- number k: its JSON text is ARGV[base + k], passed apart so that a big payload (a batch of
-- log lines) is neither escaped into the list on the worker nor decoded here.
local function emit_batch(run_key, stream, maxlen, run_id, batch, base)
  if batch == nil or batch == '' then return end
  for _, e in ipairs(cjson.decode(batch)) do
    local data = e[5]
    if type(data) == 'table' then data = cjson.encode(data)
    elseif type(data) == 'number' then data = ARGV[base + data] end
    emit(run_key, stream, maxlen, run_id, e[1], e[2], e[3], e[4], data)
  end
end

-- An item of a mapped step (its id holds '[': step ids never do) is not one of the run's
-- steps: only steps count in the run's 'settled' (its progress, settled / total).
local function count_settled(run_key, step, by)
  if not string.find(step, '[', 1, true) then redis.call('HINCRBY', run_key, 'settled', by) end
end

-- An item keeps no empty error or traceback field: 10,000 items, 20,000 fields fewer.
local function drop_empty(steps, step, err, tb)
  if string.find(step, '[', 1, true) then
    if err == '' then redis.call('HDEL', steps, step .. '|error') end
    if tb == '' then redis.call('HDEL', steps, step .. '|traceback') end
  end
end

-- The only writes of a status. A pair the table does not hold is a bug in a script (each
-- checks what it may do before it writes anything): the error reaches the caller.
local function move_run(run_key, move, st, target, ...)
  if not run_may(move, st, target) then
    error('canvasflow: ' .. move .. ' may not move a run from ' .. tostring(st) .. ' to ' .. target)
  end
  redis.call('HSET', run_key, 'status', target, ...)
end
local function move_step(steps, step, src, dst, ...)
  if not step_may(src, dst) then
    error('canvasflow: step ' .. step .. ' may not go from ' .. tostring(src) .. ' to ' .. dst)
  end
  redis.call('HSET', steps, step .. '|status', dst, ...)
end

-- The start of a new dispatch (restart, cancel, the watchdog's claim): if ``move`` may take
-- the run to ``target``, bump the epoch and set the status. Returns (status before, epoch), or
-- (nil, the reply that refuses).
local function new_epoch(run_key, move, target)
  local st = redis.call('HGET', run_key, 'status')
  if not st then return nil, {'gone', '', '0'} end
  if not is_new_epoch(move) or not run_may(move, st, target) then return nil, {'refused', st, '0'} end
  local epoch = redis.call('HINCRBY', run_key, 'epoch', 1)
  move_run(run_key, move, st, target)
  return st, epoch
end
