-- finish_step: the end of an attempt begun by begin_step: its status, output or error, its
-- buffered events; a critical failure halts the run.
-- KEYS: run, steps, lease, stream, attempts, controlled, control channel
-- ARGV: run_id, step, epoch, status (COMPLETED | FAILED | RETRYING), owner, now, maxlen,
--   output_json, error, traceback, critical ('1' | '0'), attempt_record_json, batch_json,
--   state_ttl, then the data texts of the batch (see emit_batch)
-- Returns 'ok' (also for the same finish again), 'lost' (another attempt holds the step now),
--   'gone'.
-- include: common.lua
local run_key, steps, lease, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, status, owner, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not redis.call('HGET', run_key, 'status') then return 'gone' end
local holder = redis.call('GET', lease)
if holder and holder ~= owner then return 'lost' end
local ss = redis.call('HGET', steps, step .. '|status')
if ss ~= 'RUNNING' then
  -- The same finish again (retried after its reply was lost): already done, not a second
  -- transition.
  if ss == status and redis.call('HGET', steps, step .. '|owner') == owner then return 'ok' end
  return 'lost'
end
emit_batch(run_key, stream, maxlen, run_id, ARGV[13], 14)
redis.call('DEL', lease)
redis.call('RPUSH', attempts, ARGV[12])
move_step(steps, step, ss, status, step .. '|error', ARGV[9], step .. '|traceback', ARGV[10])
drop_empty(steps, step, ARGV[9], ARGV[10])
if status == 'RETRYING' then
  emit(run_key, stream, maxlen, run_id, 'step_retrying', step, status, now, ARGV[12])
  return 'ok'
end
redis.call('HSET', steps, step .. '|finished_at', now, step .. '|output', ARGV[8])
count_settled(run_key, step, 1)
if status == 'COMPLETED' then
  redis.call('RPUSH', run_key .. ':completed', step)
  emit(run_key, stream, maxlen, run_id, 'step_completed', step, status, now, ARGV[12])
else
  if ARGV[11] == '1' and not redis.call('HGET', run_key, 'halt') then
    redis.call('HSET', run_key, 'halt', 'failed', 'failed_step', step, 'error', ARGV[9])
    controlled(KEYS[6], KEYS[7], run_id, 'halt', now)
  end
  emit(run_key, stream, maxlen, run_id, 'step_failed', step, status, now, ARGV[12])
end
return 'ok'
