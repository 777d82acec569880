-- run_once: one step, start and end in one round trip: the fast path of workers/step.py, for
-- a step that ran without asking first (its run untouched by operators and failures, as far
-- as the worker process knew). Records the attempt as begin + finish would have, unless the
-- run moved on meanwhile (another epoch), the step is settled or another copy holds it: then
-- nothing is written.
-- KEYS: run, steps, lease, stream, attempts, controlled, control channel
-- ARGV: run_id, step, epoch, status, started, now, maxlen, output_json, error, traceback,
--   critical, attempt_record_json (without "attempt"), worker, task_id, batch_json, then the
--   data texts of the batch
-- Returns {'ok', attempt, run status, halt}, or {'stale' | 'leased', run status},
--   {'settled', step status}, {'gone', ''}.
-- include: common.lua
local run_key, steps, lease, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, status, started, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', ''} end
if redis.call('HGET', run_key, 'epoch') ~= epoch then return {'stale', st} end
local ss = redis.call('HGET', steps, step .. '|status')
if (ss == status or ss == 'COMPENSATING' or ss == 'COMPENSATED')
   and redis.call('HGET', steps, step .. '|task_id') == ARGV[14]
   and redis.call('HGET', steps, step .. '|attempt_started_at') == started
   and redis.call('HGET', steps, step .. '|epoch') == epoch then
  -- This very attempt recorded already (the call retried after its reply was lost): the
  -- start time and task id identify it; nothing is recorded twice.
  return {'ok', redis.call('HGET', steps, step .. '|attempts'), st, redis.call('HGET', run_key, 'halt') or ''}
end
if is_settled(ss) then return {'settled', ss} end
if ss == 'RUNNING' then
  if redis.call('EXISTS', lease) == 1 then return {'leased', st} end
  lost_attempt(run_key, steps, stream, maxlen, run_id, step, now)
end
if st == 'PENDING' then
  move_run(run_key, 'begin', st, 'RUNNING', 'started_at', started)
  emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'RUNNING', started, '{}')
  st = 'RUNNING'
end
local attempt = redis.call('HINCRBY', steps, step .. '|attempts', 1)
move_step(steps, step, ss, status, step .. '|attempt_started_at', started, step .. '|worker', ARGV[13],
          step .. '|task_id', ARGV[14], step .. '|epoch', epoch,
          step .. '|error', ARGV[9], step .. '|traceback', ARGV[10])
drop_empty(steps, step, ARGV[9], ARGV[10])
-- The step's start: its first attempt's, or, after an operator retry reset it (restart.lua),
-- the first attempt of the retry's.
if redis.call('HEXISTS', steps, step .. '|started_at') == 0 then
  redis.call('HSET', steps, step .. '|started_at', started)
end
emit(run_key, stream, maxlen, run_id, 'step_started', step, 'RUNNING', started,
     cjson.encode({attempt = attempt, worker = ARGV[13], task_id = ARGV[14]}))
emit_batch(run_key, stream, maxlen, run_id, ARGV[15], 15)
local record = '{"attempt":' .. attempt .. ',' .. string.sub(ARGV[12], 2)
redis.call('RPUSH', attempts, record)
if status == 'RETRYING' then
  emit(run_key, stream, maxlen, run_id, 'step_retrying', step, status, now, record)
else
  redis.call('HSET', steps, step .. '|finished_at', now, step .. '|output', ARGV[8])
  count_settled(run_key, step, 1)
  if status == 'COMPLETED' then
    redis.call('RPUSH', run_key .. ':completed', step)
    emit(run_key, stream, maxlen, run_id, 'step_completed', step, status, now, record)
  else
    if ARGV[11] == '1' and not redis.call('HGET', run_key, 'halt') then
      redis.call('HSET', run_key, 'halt', 'failed', 'failed_step', step, 'error', ARGV[9])
      controlled(KEYS[6], KEYS[7], run_id, 'halt', now)
    end
    emit(run_key, stream, maxlen, run_id, 'step_failed', step, status, now, record)
  end
end
return {'ok', tostring(attempt), st, redis.call('HGET', run_key, 'halt') or ''}
