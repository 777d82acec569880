-- fail_killed: fail a step whose process is gone (killed at its hard time limit, its message
-- refused, or it broke outside its plugin): a RUNNING step of this epoch whatever holds its
-- lease, or a PENDING one of a fast-path task (killed before Redis was told it ran).
-- KEYS: run, steps, lease, stream, attempts, controlled, control channel
-- ARGV: run_id, step, epoch, now, maxlen, error, critical ('1' | '0'), attempt_record_json
-- Returns 1 when the step was failed, 0 when it was not the step's to fail (settled, another
--   epoch, run gone).
-- include: common.lua
local run_key, steps, lease, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not redis.call('HGET', run_key, 'status') then return 0 end
local ss = redis.call('HGET', steps, step .. '|status')
if ss == 'RUNNING' then
  if redis.call('HGET', steps, step .. '|epoch') ~= epoch then return 0 end
elseif ss == 'PENDING' then
  if redis.call('HGET', run_key, 'epoch') ~= epoch then return 0 end
  redis.call('HINCRBY', steps, step .. '|attempts', 1)
  redis.call('HSET', steps, step .. '|epoch', epoch)
else
  return 0
end
redis.call('DEL', lease)
redis.call('RPUSH', attempts, ARGV[8])
move_step(steps, step, ss, 'FAILED', step .. '|error', ARGV[6], step .. '|finished_at', now)
count_settled(run_key, step, 1)
if ARGV[7] == '1' and not redis.call('HGET', run_key, 'halt') then
  redis.call('HSET', run_key, 'halt', 'failed', 'failed_step', step, 'error', ARGV[6])
  controlled(KEYS[6], KEYS[7], run_id, 'halt', now)
end
emit(run_key, stream, maxlen, run_id, 'step_failed', step, 'FAILED', now, ARGV[8])
return 1
