-- conc.lua: concurrency slots (docs/design.md, "Concurrency slots"), an included piece, after
-- common.lua, of the scripts that admit runs to their group or free their slots (admit.lua,
-- transition.lua, restart.lua).
-- KEYS: none of its own. A group G is a hash (limit, workflow, key, index) whose name the run
-- hash keeps as 'conc_group'; G .. ':active' is a sorted set (run id -> admission time: the
-- runs that hold a slot) and G .. ':waiting' one (run id -> priority rank * 1e12 + submit
-- sequence: the queue). A run's hash is head .. id .. tail (keys.py's template, from RunState).
-- Returns: the functions below.

-- Free every slot whose run is gone (its state expired, or Redis lost it) or is in a status
-- that holds none (final, COMPENSATION_FAILED): a slot cannot outlive its run.
local function conc_reclaim(group, head, tail)
  local active = group .. ':active'
  for _, id in ipairs(redis.call('ZRANGE', active, 0, -1)) do
    if not holds_slot(redis.call('HGET', head .. id .. tail, 'status')) then
      redis.call('ZREM', active, id)
    end
  end
end

-- Admit waiting runs, head of the queue first, while the group has a free slot; returns their
-- ids (the caller dispatches them). A waiting run cancelled meanwhile, or gone, leaves the
-- queue without a slot.
local function conc_fill(group, head, tail, now)
  conc_reclaim(group, head, tail)
  local limit = tonumber(redis.call('HGET', group, 'limit') or '0') or 0
  local active, waiting = group .. ':active', group .. ':waiting'
  local admitted = {}
  while redis.call('ZCARD', active) < limit do
    local first = redis.call('ZRANGE', waiting, 0, 0)[1]
    if not first then break end
    redis.call('ZREM', waiting, first)
    local st = redis.call('HGET', head .. first .. tail, 'status')
    if st == 'PENDING' or st == 'PAUSING' then
      redis.call('ZADD', active, now, first)
      table.insert(admitted, first)
    end
  end
  return admitted
end

-- An empty group leaves its workflow's index (the slots it lists) and its hash goes.
local function conc_tidy(group)
  if redis.call('ZCARD', group .. ':active') == 0 and redis.call('ZCARD', group .. ':waiting') == 0 then
    local index = redis.call('HGET', group, 'index')
    if index then redis.call('SREM', index, group) end
    redis.call('DEL', group)
  end
end

-- The run stops holding (or waiting for) a slot: returns the runs admitted in its place.
local function conc_release(run_key, run_id, head, tail, now)
  local group = redis.call('HGET', run_key, 'conc_group')
  if not group then return {} end
  redis.call('ZREM', group .. ':active', run_id)
  redis.call('ZREM', group .. ':waiting', run_id)
  local admitted = conc_fill(group, head, tail, now)
  conc_tidy(group)
  return admitted
end
