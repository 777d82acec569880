-- sla_mark: emit sla_<kind> (warning | breached) for a run, at most once per run and kind.
-- KEYS: run, stream
-- ARGV: run_id, now, maxlen, kind, data_json
-- Returns 1 when emitted, 0 when emitted before or the run is gone.
-- include: common.lua
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'sla_' .. ARGV[4], ARGV[2]) == 0 then return 0 end
emit(KEYS[1], KEYS[2], ARGV[3], ARGV[1], 'sla_' .. ARGV[4], '', '', ARGV[2], ARGV[5])
return 1
