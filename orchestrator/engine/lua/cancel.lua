-- cancel: a new dispatch that winds the run down: CANCELLING with a new epoch, so nothing of
-- the old canvas starts; with terminate, running steps are marked CANCELLED and their Celery
-- task ids returned (the caller revokes them).
-- KEYS: run, steps, stream, settled channel, controlled, control channel, items (optional:
--   the items of mapped steps are terminated like steps)
-- ARGV: run_id, now, maxlen, terminate ('1' | '0'), lease key prefix ("<prefix>:lease:<run>:"),
--   data_json (of the run_status_changed event)
-- Returns {'ok' | 'refused' | 'gone', status before, new epoch, task ids of terminated steps...}.
-- include: common.lua
local run_key, steps, stream = KEYS[1], KEYS[2], KEYS[3]
local run_id, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local st, epoch = new_epoch(run_key, 'cancel', 'CANCELLING')
if not st then return epoch end
emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'CANCELLING', now, ARGV[6])
controlled(KEYS[5], KEYS[6], run_id, 'cancel', now, ARGV[4])
local out = {'ok', st, tostring(epoch)}
if ARGV[4] == '1' then
 for _, steps in ipairs({steps, KEYS[7]}) do
  local flat = redis.call('HGETALL', steps)
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    if value == 'RUNNING' and string.sub(field, -7) == '|status' then
      local sid = string.sub(field, 1, -8)
      table.insert(out, redis.call('HGET', steps, sid .. '|task_id') or '')
      move_step(steps, sid, value, 'CANCELLED', sid .. '|finished_at', now,
                sid .. '|error', 'terminated: the run was cancelled')
      count_settled(run_key, sid, 1)
      redis.call('DEL', ARGV[5] .. sid)
      emit(run_key, stream, maxlen, run_id, 'step_cancelled', sid, 'CANCELLED', now, '{"terminated":true}')
    end
  end
 end
end
redis.call('PUBLISH', KEYS[4], 'CANCELLING')
return out
