-- transition: move a run to another status if the move may (the run table of states.py).
-- Moves that start a new dispatch are refused here: restart.lua and cancel.lua bump the epoch.
-- A final status expires the run's keys after state_ttl and takes it off the live set. A status
-- that holds no concurrency slot (final, COMPENSATION_FAILED) frees the run's slot and admits
-- the next waiting runs of its group (conc.lua; the group's keys come from the run hash).
-- KEYS: run, stream, settled channel, controlled, control channel, live set
-- ARGV: run_id, move, target, now, maxlen, state_ttl, fields_json (run fields to set; null or
--   '' deletes), data_json (of the run_status_changed event), run key head and tail (keys.py's
--   template around a run id)
-- Returns {'ok' | 'refused' | 'gone', status before, ids of the runs admitted to the freed
--   slots (the caller dispatches them)...}.
-- include: common.lua
-- include: conc.lua
local run_key, stream = KEYS[1], KEYS[2]
local run_id, move, target, now, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', ''} end
if is_new_epoch(move) or not run_may(move, st, target) then return {'refused', st} end
move_run(run_key, move, st, target)
for k, v in pairs(cjson.decode(ARGV[7])) do
  if v == cjson.null or v == '' then redis.call('HDEL', run_key, k) else redis.call('HSET', run_key, k, v) end
end
emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', target, now, ARGV[8])
if target == 'PAUSING' then controlled(KEYS[4], KEYS[5], run_id, 'pause', now) end
if target == 'COMPLETED' or target == 'FAILED' or target == 'CANCELLED' then
  redis.call('ZREM', KEYS[6], run_id)  -- the live set (watchdog)
  redis.call('HSET', run_key, 'finished_at', now)
  redis.call('EXPIRE', run_key, ttl)
  redis.call('EXPIRE', run_key .. ':steps', ttl)
  redis.call('EXPIRE', run_key .. ':attempts', ttl)
  redis.call('EXPIRE', run_key .. ':completed', ttl)
  for _, k in ipairs({':items', ':items:attempts', ':map'}) do redis.call('EXPIRE', run_key .. k, ttl) end
end
redis.call('PUBLISH', KEYS[3], target)
if not holds_slot(target) then
  return {'ok', st, unpack(conc_release(run_key, run_id, ARGV[9], ARGV[10], now))}
end
return {'ok', st}
