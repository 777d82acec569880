-- set_step: set a step's status (and fields) with its event, if the step table allows the
-- change; keeps the run's count of settled steps.
-- KEYS: run, steps, stream
-- ARGV: run_id, step, status, now, maxlen, fields_json (step fields: name -> text), etype,
--   data_json, expected status ('' for any: otherwise nothing changes unless the step has it)
-- Returns 1 when set, 0 when refused (run gone, another status than expected, or the table).
-- include: common.lua
local run_key, steps, stream = KEYS[1], KEYS[2], KEYS[3]
if not redis.call('HGET', run_key, 'status') then return 0 end
local old = redis.call('HGET', steps, ARGV[2] .. '|status')
if ARGV[9] ~= '' and old ~= ARGV[9] then return 0 end
if not step_may(old, ARGV[3]) then return 0 end
local was, now_settled = is_settled(old), is_settled(ARGV[3])
if now_settled and not was then count_settled(run_key, ARGV[2], 1) end
if was and not now_settled then count_settled(run_key, ARGV[2], -1) end
move_step(steps, ARGV[2], old, ARGV[3])
for k, v in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', steps, ARGV[2] .. '|' .. k, v) end
emit(run_key, stream, ARGV[5], ARGV[1], ARGV[7], ARGV[2], ARGV[3], ARGV[4], ARGV[8])
return 1
