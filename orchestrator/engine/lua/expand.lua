-- expand: a mapped step that is RUNNING (begun by its task) stores its element list once and
-- says which items this dispatch runs: those not started (PENDING, after a pause too), waiting
-- for a retry, or RUNNING without a live lease (its worker lost); one RUNNING with a live lease
-- belongs to an earlier dispatch and ends on its own. Settled items stay settled (a retry of the
-- run resets the ones it re-runs first: restart.lua). The same list expanded again in the same
-- epoch (the mapped step's message delivered twice) records nothing again. A different list
-- (the step's upstream ran again) forgets the old items. With lanes (max_parallel below the
-- items to run) the list of items to run is stored for claim_item, once per epoch. The mapped
-- step's lease is dropped: its items hold their own, its collector ends it.
-- KEYS: run, steps, items, map, stream, lease of the mapped step, completed
-- ARGV: run_id, step, epoch, now, maxlen, owner, digest, lease key prefix, max_parallel (0:
--   none), then the element JSON texts, in order
-- Returns {'ok' | 'again', n, todo count, todo indices...} or {'stale' | 'lost' | 'gone'}.
-- include: common.lua
local run_key, steps, items, map, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, now, maxlen, owner, digest = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local prefix, cap = ARGV[8], tonumber(ARGV[9])
local FIRST = 10
local n = #ARGV - FIRST + 1
if not redis.call('HGET', run_key, 'status') then return {'gone'} end
if redis.call('HGET', run_key, 'epoch') ~= epoch then return {'stale'} end
if redis.call('HGET', steps, step .. '|status') ~= 'RUNNING'
   or redis.call('HGET', steps, step .. '|owner') ~= owner then return {'lost'} end
local FIELDS = {'status', 'attempts', 'attempt_started_at', 'worker', 'task_id', 'epoch', 'owner',
  'started_at', 'finished_at', 'output', 'error', 'traceback', 'lost', 'compensation_error',
  'compensation_traceback', 'compensation_output'}
local n_old = tonumber(redis.call('HGET', map, step .. '|n') or '-1')
local same = n_old == n and redis.call('HGET', map, step .. '|digest') == digest
local verdict = 'ok'
if same and redis.call('HGET', map, step .. '|epoch') == epoch then
  verdict = 'again'
elseif not same then
  for i = 0, n_old - 1 do
    local id = step .. '[' .. i .. ']'
    local del = {}
    for _, f in ipairs(FIELDS) do table.insert(del, id .. '|' .. f) end
    redis.call('HDEL', items, unpack(del))
    redis.call('HDEL', map, step .. '|' .. i)
    redis.call('LREM', KEYS[7], 0, id)
  end
  local batch = {}
  for i = 0, n - 1 do
    table.insert(batch, step .. '|' .. i); table.insert(batch, ARGV[FIRST + i])
    if #batch >= 1000 then redis.call('HSET', map, unpack(batch)); batch = {} end
  end
  if #batch > 0 then redis.call('HSET', map, unpack(batch)) end
  redis.call('HSET', map, step .. '|n', n, step .. '|digest', digest)
end
local todo, fresh = {}, {}
for i = 0, n - 1 do
  local id = step .. '[' .. i .. ']'
  local ss = redis.call('HGET', items, id .. '|status')
  if not ss then
    table.insert(fresh, id .. '|status'); table.insert(fresh, 'PENDING')
    if #fresh >= 1000 then redis.call('HSET', items, unpack(fresh)); fresh = {} end
    table.insert(todo, i)
  elseif ss == 'PENDING' or ss == 'RETRYING'
         or (ss == 'RUNNING' and redis.call('EXISTS', prefix .. id) == 0) then
    -- not started, waiting for a retry, or its worker lost: it runs (a lost attempt is
    -- reported by the begin of the next)
    table.insert(todo, i)
  end
end
if #fresh > 0 then redis.call('HSET', items, unpack(fresh)) end
if verdict == 'ok' then
  redis.call('HSET', map, step .. '|epoch', epoch)
  redis.call('HSET', steps, step .. '|items', n)
  emit(run_key, stream, maxlen, run_id, 'step_mapped', step, 'RUNNING', now,
       cjson.encode({step = step, total = n}))
end
if cap > 0 and cap < #todo and not redis.call('HGET', map, step .. '|m|' .. epoch) then
  redis.call('HSET', map, step .. '|m|' .. epoch, #todo)
  local batch = {}
  for k, i in ipairs(todo) do
    table.insert(batch, step .. '|todo|' .. epoch .. '|' .. (k - 1)); table.insert(batch, i)
    if #batch >= 1000 then redis.call('HSET', map, unpack(batch)); batch = {} end
  end
  if #batch > 0 then redis.call('HSET', map, unpack(batch)) end
end
redis.call('DEL', KEYS[6])
local out = {verdict, tostring(n), tostring(#todo)}
for _, i in ipairs(todo) do table.insert(out, tostring(i)) end
return out
