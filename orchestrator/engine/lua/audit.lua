-- audit: append an operator action to the run's events; a run that does not exist gets seq 0
-- (the action is still audited, by its action id).
-- KEYS: run, stream
-- ARGV: run_id, now, maxlen, data_json
-- Returns the event's seq (0 for an unknown run).
-- include: common.lua
if redis.call('EXISTS', KEYS[1]) == 1 then
  return emit(KEYS[1], KEYS[2], ARGV[3], ARGV[1], 'operator_action', '', '', ARGV[2], ARGV[4])
end
redis.call('XADD', KEYS[2], '*', 'run', ARGV[1], 'seq', 0, 'type', 'operator_action', 'step', '',
           'status', '', 'ts', ARGV[2], 'data', ARGV[4])
return 0
