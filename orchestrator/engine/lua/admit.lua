-- admit: a run of a workflow with a concurrency limit asks for a slot in its group (at submit,
-- after its record was created; again by the watchdog if that submit died before asking).
-- Idempotent: a run that holds a slot or waits already keeps its place. Stale slots are
-- reclaimed first (conc.lua). With the group full: 'queue' and 'cancel_in_progress' put the
-- run in the queue ('cancel_in_progress' at its head, and marks the oldest cancellable holder
-- for the caller to cancel); 'cancel_newest' ends the run CANCELLED here, with the reason.
-- With run_id '' it only reclaims and admits (the watchdog's pass over groups with waiters).
-- KEYS: group hash, its active set, its waiting set, the workflow's group index, the
--   submit sequence, run, steps, stream, live set, settled channel
-- ARGV: run_id, limit, strategy, rank (priority: 1 high, 2 normal, 3 low), now, maxlen,
--   state_ttl, run key head, run key tail, workflow, key, reason (of a cancel_newest cancel)
-- Returns {verdict, ahead, victim, admitted ids...}: verdict 'admitted' | 'waiting' |
--   'cancelled' | 'filled' (run_id '') | 'gone' | 'refused' (the run is in a status that
--   holds no slot: final, COMPENSATION_FAILED; a run past PENDING in one that holds a slot is
--   admitted, even over the limit: it is one canvasflow recover rebuilt); ahead: runs before it in the queue; victim: the run
--   the caller must cancel (cancel_in_progress) or ''; admitted: every run given a slot by
--   this call (the caller dispatches each).
-- include: common.lua
-- include: conc.lua
local group, active, waiting, index, seqkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_key, steps, stream = KEYS[6], KEYS[7], KEYS[8]
local run_id, limit, strategy, rank, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local maxlen, ttl, head, tail = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if run_id == '' then
  if redis.call('EXISTS', group) == 0 then return {'gone', '0', ''} end
  local admitted = conc_fill(group, head, tail, now)
  conc_tidy(group)
  return {'filled', '0', '', unpack(admitted)}
end
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', '0', ''} end
redis.call('HSET', group, 'limit', limit, 'workflow', ARGV[10], 'key', ARGV[11], 'index', index)
redis.call('SADD', index, group)
if redis.call('ZSCORE', active, run_id) then return {'admitted', '0', ''} end
local new = false
if not redis.call('ZSCORE', waiting, run_id) then
  if st ~= 'PENDING' then
    -- Past PENDING without a slot: a run rebuilt by canvasflow recover after Redis lost every
    -- slot. It is running already: it holds one again, even over the limit, until it ends.
    if holds_slot(st) then
      redis.call('ZADD', active, now, run_id)
      return {'admitted', '0', ''}
    end
    conc_tidy(group)
    return {'refused', '0', ''}
  end
  conc_reclaim(group, head, tail)
  local full = redis.call('ZCARD', active) >= tonumber(limit)
  if full and strategy == 'cancel_newest' then
    local reason = ARGV[12]
    redis.call('HINCRBY', run_key, 'epoch', 1)
    move_run(run_key, 'cancel', st, 'CANCELLING')
    emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'CANCELLING', now,
         cjson.encode({action = 'concurrency', reason = reason}))
    local flat = redis.call('HGETALL', steps)
    for i = 1, #flat, 2 do
      local field, value = flat[i], flat[i + 1]
      if string.sub(field, -7) == '|status' and not is_settled(value) then
        local sid = string.sub(field, 1, -8)
        move_step(steps, sid, value, 'CANCELLED', sid .. '|finished_at', now)
        redis.call('HINCRBY', run_key, 'settled', 1)
        emit(run_key, stream, maxlen, run_id, 'step_cancelled', sid, 'CANCELLED', now,
             cjson.encode({reason = reason}))
      end
    end
    move_run(run_key, 'settle', 'CANCELLING', 'CANCELLED', 'error', reason, 'finished_at', now)
    emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'CANCELLED', now,
         cjson.encode({reason = reason}))
    redis.call('ZREM', KEYS[9], run_id)
    for _, k in ipairs({run_key, steps, run_key .. ':attempts', run_key .. ':completed'}) do
      redis.call('EXPIRE', k, ttl)
    end
    redis.call('PUBLISH', KEYS[10], 'CANCELLED')
    conc_tidy(group)
    return {'cancelled', '0', ''}
  end
  local r = tonumber(rank)
  if full and strategy == 'cancel_in_progress' then r = 0 end
  local seq = redis.call('INCR', seqkey)
  redis.call('ZADD', waiting, string.format('%.0f', r * 1e12 + seq), run_id)
  new = true
end
local admitted = conc_fill(group, head, tail, now)
for _, id in ipairs(admitted) do
  if id == run_id then return {'admitted', '0', '', unpack(admitted)} end
end
local victim = ''
if new and strategy == 'cancel_in_progress' then
  -- One holder per newcomer: the oldest one not already being cancelled for another.
  for _, id in ipairs(redis.call('ZRANGE', active, 0, -1)) do
    local k = head .. id .. tail
    local s = redis.call('HGET', k, 'status')
    if (s == 'PENDING' or s == 'RUNNING' or s == 'PAUSING' or s == 'PAUSED')
       and not redis.call('HGET', k, 'conc_evicted') then
      redis.call('HSET', k, 'conc_evicted', run_id)
      victim = id
      break
    end
  end
end
return {'waiting', tostring(redis.call('ZRANK', waiting, run_id) or 0), victim, unpack(admitted)}
