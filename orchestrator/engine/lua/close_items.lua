-- close_items: a mapped step's items that will not run in this dispatch end CANCELLED: those
-- never started (PENDING, RETRYING) and, with lost = '1', RUNNING ones whose lease is gone.
-- KEYS: run, items, stream
-- ARGV: run_id, now, maxlen, lease key prefix, lost ('1' | '0'), reason, then the item ids
-- Returns how many were closed.
-- include: common.lua
local run_key, items, stream = KEYS[1], KEYS[2], KEYS[3]
local run_id, now, maxlen, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local closed = 0
for a = 7, #ARGV do
  local id = ARGV[a]
  local ss = redis.call('HGET', items, id .. '|status')
  if ss == 'PENDING' or ss == 'RETRYING'
     or (ARGV[5] == '1' and ss == 'RUNNING' and redis.call('EXISTS', prefix .. id) == 0) then
    move_step(items, id, ss, 'CANCELLED', id .. '|finished_at', now, id .. '|error', ARGV[6])
    emit(run_key, stream, maxlen, run_id, 'step_cancelled', id, 'CANCELLED', now,
         cjson.encode({reason = ARGV[6]}))
    closed = closed + 1
  end
end
return closed
