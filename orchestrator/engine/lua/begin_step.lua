-- begin_step: a step asks whether it may run; if so its attempt begins (counted, leased).
-- KEYS: run, steps, lease, stream
-- ARGV: run_id, step, epoch, intent, owner, now, lease_ttl, maxlen, task_id, worker, reason
--   intent: run | skip (reason says why) | late (the step has been running since ``now``
--   without having asked, workers/step.py's fast path: only the epoch, a duplicate and another
--   holder can stop it now; a pause or a halt lets it finish like any running step).
-- Returns {verdict, detail...}: {'go', attempt}, {'skipped' | 'cancelled' | 'paused' |
--   'stale', run status}, {'leased', holder}, {'adopt', step status, output},
--   {'settled', step status, output, task id}, {'gone'}.
-- include: common.lua
local run_key, steps, lease, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local run_id, step, epoch, intent, owner, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local maxlen = ARGV[8]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone'} end
if redis.call('HGET', run_key, 'epoch') ~= epoch then return {'stale', st} end
local ss = redis.call('HGET', steps, step .. '|status')
if is_settled(ss) then
  -- Settled by an earlier dispatch (it was running when the run was re-dispatched): this
  -- dispatch adopts its outcome and carries on; a duplicate of the same dispatch is dropped.
  if redis.call('HGET', steps, step .. '|epoch') ~= epoch then
    return {'adopt', ss, redis.call('HGET', steps, step .. '|output') or 'null'}
  end
  -- with what a copy of the very task that settled it needs to continue the canvas again
  return {'settled', ss, redis.call('HGET', steps, step .. '|output') or 'null',
          redis.call('HGET', steps, step .. '|task_id') or ''}
end
if ss == 'RUNNING' then
  local holder = redis.call('GET', lease)
  if holder and holder ~= owner then return {'leased', holder} end
  if intent ~= 'skip' and redis.call('HGET', steps, step .. '|owner') == owner then
    -- Our own begin again (retried after its reply was lost, or our message handed back and
    -- delivered to this process again): the same attempt, nothing recorded twice.
    redis.call('SET', lease, owner, 'EX', ARGV[7])
    return {'go', redis.call('HGET', steps, step .. '|attempts') or '1'}
  end
  lost_attempt(run_key, steps, stream, maxlen, run_id, step, now)
end
local halt = redis.call('HGET', run_key, 'halt')
if intent == 'late' then
  if st ~= 'RUNNING' and st ~= 'PENDING' and st ~= 'PAUSING' then return {'stale', st} end
elseif st == 'PAUSING' or st == 'PAUSED' then return {'paused', st}
elseif st == 'CANCELLING' or (halt and halt ~= '') or (st ~= 'RUNNING' and st ~= 'PENDING') then
  move_step(steps, step, ss, 'CANCELLED', step .. '|finished_at', now)
  count_settled(run_key, step, 1)
  emit(run_key, stream, maxlen, run_id, 'step_cancelled', step, 'CANCELLED', now, '{}')
  return {'cancelled', st}
end
if st == 'PENDING' then
  move_run(run_key, 'begin', st, 'RUNNING', 'started_at', now)
  emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'RUNNING', now, '{}')
end
if intent == 'skip' then
  move_step(steps, step, ss, 'SKIPPED', step .. '|finished_at', now, step .. '|error', ARGV[11])
  count_settled(run_key, step, 1)
  emit(run_key, stream, maxlen, run_id, 'step_skipped', step, 'SKIPPED', now,
       cjson.encode({reason = ARGV[11]}))
  return {'skipped', st}
end
local attempt = redis.call('HINCRBY', steps, step .. '|attempts', 1)
move_step(steps, step, ss, 'RUNNING', step .. '|attempt_started_at', now,
          step .. '|worker', ARGV[10], step .. '|task_id', ARGV[9], step .. '|epoch', epoch,
          step .. '|owner', owner)
-- The step's start: its first attempt's, or, after an operator retry reset it (restart.lua),
-- the first attempt of the retry's.
if redis.call('HEXISTS', steps, step .. '|started_at') == 0 then
  redis.call('HSET', steps, step .. '|started_at', now)
end
redis.call('SET', lease, owner, 'EX', ARGV[7])
emit(run_key, stream, maxlen, run_id, 'step_started', step, 'RUNNING', now,
     cjson.encode({attempt = attempt, worker = ARGV[10], task_id = ARGV[9]}))
return {'go', tostring(attempt)}
