-- read_run: a run's hash, steps hash and attempt list, atomically, as three JSON texts: the
-- same data as HGETALL, HGETALL, LRANGE, but parsed by json.loads in C (redis-py's reply
-- parser took ~2 us per element, and a finished 200-step run's steps hash alone has ~4,400).
-- KEYS: run, steps, attempts
-- Returns false for an unknown run, else {run_json, steps_json, attempts_json}.
local run = redis.call('HGETALL', KEYS[1])
if #run == 0 then return false end
local flat = redis.call('HGETALL', KEYS[2])
local r, s = {}, {}
for i = 1, #run, 2 do r[run[i]] = run[i + 1] end
for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
local attempts = redis.call('LRANGE', KEYS[3], 0, -1)
return {cjson.encode(r), next(s) and cjson.encode(s) or '{}', '[' .. table.concat(attempts, ',') .. ']'}
