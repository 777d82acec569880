"""Hot state of runs in Redis, changed only through atomic Lua scripts that also append events.

Every state change is one round trip: a script checks the run's status and epoch, writes the
step or run fields, bumps the run's sequence number and appends the event to the stream.
The step runtime on workers and the client both go through :class:`RunState`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from orchestrator.engine.states import RunStatus, sources_of
from orchestrator.keys import Keys, step_field

# How long a run stays in the "controlled" set after an operator action or a failure touched it
# (workers/watch.py): its queued steps ask Redis before they start for at least this long.
CONTROL_WINDOW = 24 * 3600

# Shared Lua: emit(type, step, status, data_json) appends one event with the next run seq.
_EMIT = (
    f"local CONTROL_WINDOW = {CONTROL_WINDOW}\n"
    + """
local function emit(run_key, stream, maxlen, run_id, etype, step, status, ts, data)
  local seq = redis.call('HINCRBY', run_key, 'seq', 1)
  local args = {stream}
  if tonumber(maxlen) > 0 then
    table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, maxlen)
  end
  for _, v in ipairs({'*', 'run', run_id, 'seq', seq, 'type', etype, 'step', step,
                      'status', status, 'ts', ts, 'data', data}) do table.insert(args, v) end
  redis.call('XADD', unpack(args))
  return seq
end
-- An operator action or a failure changed what may start in the run: record it in the
-- "controlled" set (kept CONTROL_WINDOW seconds) and tell every worker process
-- (workers/watch.py), so none starts a step of the run before asking Redis first.
local function controlled(zkey, channel, run_id, action, now, flag)
  redis.call('ZADD', zkey, now, run_id)
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', tonumber(now) - CONTROL_WINDOW)
  redis.call('PUBLISH', channel, run_id .. ' ' .. action .. ' ' .. (flag or ''))
end
-- batch: JSON list of [type, step, status, ts, data]. data is an object (encoded here), or the
-- number k: its JSON text is ARGV[base + k], passed apart so that a big payload (a batch of
-- log lines) is neither escaped into the list on the worker nor decoded here.
-- A RUNNING step whose lease is gone lost its attempt (its worker died, or was cut off from
-- Redis too long); a new attempt is about to take over. Say so once per lost attempt, so the
-- audit store closes it instead of keeping it RUNNING for ever.
local function lost_attempt(run_key, steps, stream, maxlen, run_id, step, now)
  local n = redis.call('HGET', steps, step .. '|attempts') or '0'
  if redis.call('HGET', steps, step .. '|lost') == n then return end
  redis.call('HSET', steps, step .. '|lost', n)
  emit(run_key, stream, maxlen, run_id, 'attempt_lost', step, 'LOST', now, cjson.encode({
    attempt = tonumber(n), worker = redis.call('HGET', steps, step .. '|worker') or '',
    task_id = redis.call('HGET', steps, step .. '|task_id') or '',
    started_at = tonumber(redis.call('HGET', steps, step .. '|attempt_started_at') or ''),
    reason = 'its worker stopped renewing the lease (killed, or cut off from Redis) before it finished'}))
end
local function emit_batch(run_key, stream, maxlen, run_id, batch, base)
  if batch == nil or batch == '' then return end
  for _, e in ipairs(cjson.decode(batch)) do
    local data = e[5]
    if type(data) == 'table' then data = cjson.encode(data)
    elseif type(data) == 'number' then data = ARGV[base + data] end
    emit(run_key, stream, maxlen, run_id, e[1], e[2], e[3], e[4], data)
  end
end
"""
)

# KEYS: run, steps, lease, stream. ARGV: run_id, step, epoch, intent, owner, now, lease_ttl,
# maxlen, task_id, worker, reason. intent: run | skip | late ("late": the step has been running
# since ``now`` without having asked, workers/step.py's fast path: only the epoch, a duplicate
# and another holder can stop it now, a pause or a halt lets it finish like any running step).
_BEGIN = (
    _EMIT
    + """
local run_key, steps, lease, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local run_id, step, epoch, intent, owner, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local maxlen = ARGV[8]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone'} end
if redis.call('HGET', run_key, 'epoch') ~= epoch then return {'stale', st} end
local ss = redis.call('HGET', steps, step .. '|status')
if ss == 'COMPLETED' or ss == 'FAILED' or ss == 'SKIPPED' or ss == 'CANCELLED'
   or ss == 'COMPENSATING' or ss == 'COMPENSATED' then
  -- Settled by an earlier dispatch (it was running when the run was re-dispatched): this
  -- dispatch adopts its outcome and carries on; a duplicate of the same dispatch is dropped.
  if redis.call('HGET', steps, step .. '|epoch') ~= epoch then
    return {'adopt', ss, redis.call('HGET', steps, step .. '|output') or 'null'}
  end
  -- with what a copy of the very task that settled it needs to continue the canvas again
  return {'settled', ss, redis.call('HGET', steps, step .. '|output') or 'null',
          redis.call('HGET', steps, step .. '|task_id') or ''}
end
if ss == 'RUNNING' then
  local holder = redis.call('GET', lease)
  if holder and holder ~= owner then return {'leased', holder} end
  if intent ~= 'skip' and redis.call('HGET', steps, step .. '|owner') == owner then
    -- Our own begin again (retried after its reply was lost, or our message handed back and
    -- delivered to this process again): the same attempt, nothing recorded twice.
    redis.call('SET', lease, owner, 'EX', ARGV[7])
    return {'go', redis.call('HGET', steps, step .. '|attempts') or '1'}
  end
  lost_attempt(run_key, steps, stream, maxlen, run_id, step, now)
end
local halt = redis.call('HGET', run_key, 'halt')
if intent == 'late' then
  if st ~= 'RUNNING' and st ~= 'PENDING' and st ~= 'PAUSING' then return {'stale', st} end
elseif st == 'PAUSING' or st == 'PAUSED' then return {'paused', st}
elseif st == 'CANCELLING' or (halt and halt ~= '') or (st ~= 'RUNNING' and st ~= 'PENDING') then
  redis.call('HSET', steps, step .. '|status', 'CANCELLED', step .. '|finished_at', now)
  redis.call('HINCRBY', run_key, 'settled', 1)
  emit(run_key, stream, maxlen, run_id, 'step_cancelled', step, 'CANCELLED', now, '{}')
  return {'cancelled', st}
end
if st == 'PENDING' then
  redis.call('HSET', run_key, 'status', 'RUNNING', 'started_at', now)
  emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'RUNNING', now, '{}')
end
if intent == 'skip' then
  redis.call('HSET', steps, step .. '|status', 'SKIPPED', step .. '|finished_at', now,
             step .. '|error', ARGV[11])
  redis.call('HINCRBY', run_key, 'settled', 1)
  emit(run_key, stream, maxlen, run_id, 'step_skipped', step, 'SKIPPED', now,
       cjson.encode({reason = ARGV[11]}))
  return {'skipped', st}
end
local attempt = redis.call('HINCRBY', steps, step .. '|attempts', 1)
redis.call('HSET', steps, step .. '|status', 'RUNNING', step .. '|attempt_started_at', now,
           step .. '|worker', ARGV[10], step .. '|task_id', ARGV[9], step .. '|epoch', epoch,
           step .. '|owner', owner)
if attempt == 1 then redis.call('HSET', steps, step .. '|started_at', now) end
redis.call('SET', lease, owner, 'EX', ARGV[7])
emit(run_key, stream, maxlen, run_id, 'step_started', step, 'RUNNING', now,
     cjson.encode({attempt = attempt, worker = ARGV[10], task_id = ARGV[9]}))
return {'go', tostring(attempt)}
"""
)

# KEYS: run, steps, lease, stream, attempts, controlled, control channel. ARGV: run_id, step,
# epoch, status, owner, now, maxlen, output_json, error, traceback, critical,
# attempt_record_json, batch_json, state_ttl, data texts of the batch...
_FINISH = (
    _EMIT
    + """
local run_key, steps, lease, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, status, owner, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not redis.call('HGET', run_key, 'status') then return 'gone' end
local holder = redis.call('GET', lease)
if holder and holder ~= owner then return 'lost' end
local ss = redis.call('HGET', steps, step .. '|status')
if ss ~= 'RUNNING' then
  -- The same finish again (retried after its reply was lost): already done, not a second
  -- transition.
  if ss == status and redis.call('HGET', steps, step .. '|owner') == owner then return 'ok' end
  return 'lost'
end
emit_batch(run_key, stream, maxlen, run_id, ARGV[13], 14)
redis.call('DEL', lease)
redis.call('RPUSH', attempts, ARGV[12])
redis.call('HSET', steps, step .. '|status', status, step .. '|error', ARGV[9],
           step .. '|traceback', ARGV[10])
local data = {}
if status == 'RETRYING' then
  emit(run_key, stream, maxlen, run_id, 'step_retrying', step, status, now, ARGV[12])
  return 'ok'
end
redis.call('HSET', steps, step .. '|finished_at', now, step .. '|output', ARGV[8])
redis.call('HINCRBY', run_key, 'settled', 1)
if status == 'COMPLETED' then
  redis.call('RPUSH', run_key .. ':completed', step)
  emit(run_key, stream, maxlen, run_id, 'step_completed', step, status, now, ARGV[12])
else
  if ARGV[11] == '1' and not redis.call('HGET', run_key, 'halt') then
    redis.call('HSET', run_key, 'halt', 'failed', 'failed_step', step, 'error', ARGV[9])
    controlled(KEYS[6], KEYS[7], run_id, 'halt', now)
  end
  emit(run_key, stream, maxlen, run_id, 'step_failed', step, status, now, ARGV[12])
end
return 'ok'
"""
)

# One step, start and end in one round trip: the fast path of workers/step.py, for a step that
# ran without asking first (its run untouched by operators and failures, as far as the worker
# process knew). Records the attempt as begin + finish would have, unless the run moved on
# meanwhile (another epoch: 'stale'), the step is settled ('settled') or another copy holds it
# ('leased'): then nothing is written. Returns {'ok', attempt, run status, halt} otherwise.
# KEYS: run, steps, lease, stream, attempts, controlled, control channel. ARGV: run_id, step,
# epoch, status, started, now, maxlen, output_json, error, traceback, critical,
# attempt_record_json (without "attempt"), worker, task_id, batch_json, data texts of the batch...
_RUN_ONCE = (
    _EMIT
    + """
local run_key, steps, lease, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, status, started, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', ''} end
if redis.call('HGET', run_key, 'epoch') ~= epoch then return {'stale', st} end
local ss = redis.call('HGET', steps, step .. '|status')
if (ss == status or ss == 'COMPENSATING' or ss == 'COMPENSATED')
   and redis.call('HGET', steps, step .. '|task_id') == ARGV[14]
   and redis.call('HGET', steps, step .. '|attempt_started_at') == started
   and redis.call('HGET', steps, step .. '|epoch') == epoch then
  -- This very attempt recorded already (the call retried after its reply was lost): the
  -- start time and task id identify it; nothing is recorded twice.
  return {'ok', redis.call('HGET', steps, step .. '|attempts'), st, redis.call('HGET', run_key, 'halt') or ''}
end
if ss == 'COMPLETED' or ss == 'FAILED' or ss == 'SKIPPED' or ss == 'CANCELLED'
   or ss == 'COMPENSATING' or ss == 'COMPENSATED' then return {'settled', ss} end
if ss == 'RUNNING' then
  if redis.call('EXISTS', lease) == 1 then return {'leased', st} end
  lost_attempt(run_key, steps, stream, maxlen, run_id, step, now)
end
if st == 'PENDING' then
  redis.call('HSET', run_key, 'status', 'RUNNING', 'started_at', started)
  emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'RUNNING', started, '{}')
  st = 'RUNNING'
end
local attempt = redis.call('HINCRBY', steps, step .. '|attempts', 1)
redis.call('HSET', steps, step .. '|attempt_started_at', started, step .. '|worker', ARGV[13],
           step .. '|task_id', ARGV[14], step .. '|epoch', epoch, step .. '|status', status,
           step .. '|error', ARGV[9], step .. '|traceback', ARGV[10])
if attempt == 1 then redis.call('HSET', steps, step .. '|started_at', started) end
emit(run_key, stream, maxlen, run_id, 'step_started', step, 'RUNNING', started,
     cjson.encode({attempt = attempt, worker = ARGV[13], task_id = ARGV[14]}))
emit_batch(run_key, stream, maxlen, run_id, ARGV[15], 15)
local record = '{"attempt":' .. attempt .. ',' .. string.sub(ARGV[12], 2)
redis.call('RPUSH', attempts, record)
if status == 'RETRYING' then
  emit(run_key, stream, maxlen, run_id, 'step_retrying', step, status, now, record)
else
  redis.call('HSET', steps, step .. '|finished_at', now, step .. '|output', ARGV[8])
  redis.call('HINCRBY', run_key, 'settled', 1)
  if status == 'COMPLETED' then
    redis.call('RPUSH', run_key .. ':completed', step)
    emit(run_key, stream, maxlen, run_id, 'step_completed', step, status, now, record)
  else
    if ARGV[11] == '1' and not redis.call('HGET', run_key, 'halt') then
      redis.call('HSET', run_key, 'halt', 'failed', 'failed_step', step, 'error', ARGV[9])
      controlled(KEYS[6], KEYS[7], run_id, 'halt', now)
    end
    emit(run_key, stream, maxlen, run_id, 'step_failed', step, status, now, record)
  end
end
return {'ok', tostring(attempt), st, redis.call('HGET', run_key, 'halt') or ''}
"""
)

# KEYS: run, stream, settled channel, controlled, control channel, live set. ARGV: run_id,
# target, now, maxlen, state_ttl, fields_json, data_json, allowed sources...
_TRANSITION = (
    _EMIT
    + """
local run_key, stream = KEYS[1], KEYS[2]
local run_id, target, now, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', ''} end
local ok = false
for i = 8, #ARGV do if ARGV[i] == st then ok = true end end
if not ok then return {'refused', st} end
redis.call('HSET', run_key, 'status', target)
for k, v in pairs(cjson.decode(ARGV[6])) do
  if v == cjson.null or v == '' then redis.call('HDEL', run_key, k) else redis.call('HSET', run_key, k, v) end
end
emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', target, now, ARGV[7])
if target == 'PAUSING' then controlled(KEYS[4], KEYS[5], run_id, 'pause', now) end
if target == 'COMPLETED' or target == 'FAILED' or target == 'CANCELLED' then
  redis.call('ZREM', KEYS[6], run_id)  -- the live set (watchdog)
  redis.call('HSET', run_key, 'finished_at', now)
  redis.call('EXPIRE', run_key, ttl)
  redis.call('EXPIRE', run_key .. ':steps', ttl)
  redis.call('EXPIRE', run_key .. ':attempts', ttl)
  redis.call('EXPIRE', run_key .. ':completed', ttl)
end
redis.call('PUBLISH', KEYS[3], target)
return {'ok', st}
"""
)

# KEYS: run, steps, stream. ARGV: run_id, step, status, now, maxlen, fields_json, etype, data,
# expected status ('' for any: otherwise nothing changes unless the step has it)
_STEP_SET = (
    _EMIT
    + """
local run_key, steps, stream = KEYS[1], KEYS[2], KEYS[3]
if not redis.call('HGET', run_key, 'status') then return 0 end
local settled_states = {COMPLETED=1, FAILED=1, SKIPPED=1, CANCELLED=1, COMPENSATING=1, COMPENSATED=1}
local old = redis.call('HGET', steps, ARGV[2] .. '|status')
if ARGV[9] ~= '' and old ~= ARGV[9] then return 0 end
local was, now_settled = settled_states[old or ''] ~= nil, settled_states[ARGV[3]] ~= nil
if now_settled and not was then redis.call('HINCRBY', run_key, 'settled', 1) end
if was and not now_settled then redis.call('HINCRBY', run_key, 'settled', -1) end
redis.call('HSET', steps, ARGV[2] .. '|status', ARGV[3])
for k, v in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', steps, ARGV[2] .. '|' .. k, v) end
emit(run_key, stream, ARGV[5], ARGV[1], ARGV[7], ARGV[2], ARGV[3], ARGV[4], ARGV[8])
return 1
"""
)

# KEYS: run, stream. ARGV: run_id, maxlen, batch_json, data texts...
_EMIT_BATCH = (
    _EMIT
    + """
if not redis.call('HGET', KEYS[1], 'status') then return 0 end
emit_batch(KEYS[1], KEYS[2], ARGV[2], ARGV[1], ARGV[3], 3)
return 1
"""
)

# KEYS: run, steps, stream, channel, completed, attempts, controlled, control channel, live set.
# ARGV: run_id, now, maxlen, target,
# action, reset_json, clear_json, data_json, sources...
_RESTART = (
    _EMIT
    + """
local run_key, steps, stream = KEYS[1], KEYS[2], KEYS[3]
local run_id, now, maxlen, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', '', '0'} end
local ok = false
for i = 9, #ARGV do if ARGV[i] == st then ok = true end end
if not ok then return {'refused', st, '0'} end
local epoch = redis.call('HINCRBY', run_key, 'epoch', 1)
redis.call('HSET', run_key, 'status', target)
for _, f in ipairs(cjson.decode(ARGV[7])) do redis.call('HDEL', run_key, f) end
local settled_states = {COMPLETED=1, FAILED=1, SKIPPED=1, CANCELLED=1, COMPENSATING=1, COMPENSATED=1}
for _, sid in ipairs(cjson.decode(ARGV[6])) do
  local ss = redis.call('HGET', steps, sid .. '|status')
  if ss and settled_states[ss] then redis.call('HINCRBY', run_key, 'settled', -1) end
  redis.call('HSET', steps, sid .. '|status', 'PENDING')
  redis.call('HDEL', steps, sid .. '|output', sid .. '|error', sid .. '|traceback', sid .. '|finished_at',
             sid .. '|compensation_error', sid .. '|compensation_traceback', sid .. '|compensation_output')
  redis.call('LREM', KEYS[5], 0, sid)
end
for i = 1, 6 do if i ~= 3 and i ~= 4 then redis.call('PERSIST', KEYS[i]) end end
local data = cjson.decode(ARGV[8])
data['epoch'] = epoch
emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', target, now, cjson.encode(data))
controlled(KEYS[7], KEYS[8], run_id, 'restart', now)
redis.call('ZADD', KEYS[9], now, run_id)  -- live again (a retry of a finished run): the watchdog
redis.call('PUBLISH', KEYS[4], target)
return {'ok', st, tostring(epoch)}
"""
)

# KEYS: run, steps, stream, channel, controlled, control channel. ARGV: run_id, now, maxlen,
# terminate, lease_prefix, data_json, sources...
_CANCEL = (
    _EMIT
    + """
local run_key, steps, stream = KEYS[1], KEYS[2], KEYS[3]
local run_id, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', '', '0'} end
local ok = false
for i = 7, #ARGV do if ARGV[i] == st then ok = true end end
if not ok then return {'refused', st, '0'} end
local epoch = redis.call('HINCRBY', run_key, 'epoch', 1)
redis.call('HSET', run_key, 'status', 'CANCELLING')
emit(run_key, stream, maxlen, run_id, 'run_status_changed', '', 'CANCELLING', now, ARGV[6])
controlled(KEYS[5], KEYS[6], run_id, 'cancel', now, ARGV[4])
local out = {'ok', st, tostring(epoch)}
if ARGV[4] == '1' then
  local flat = redis.call('HGETALL', steps)
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    if value == 'RUNNING' and string.sub(field, -7) == '|status' then
      local sid = string.sub(field, 1, -8)
      table.insert(out, redis.call('HGET', steps, sid .. '|task_id') or '')
      redis.call('HSET', steps, field, 'CANCELLED', sid .. '|finished_at', now,
                 sid .. '|error', 'terminated: the run was cancelled')
      redis.call('HINCRBY', run_key, 'settled', 1)
      redis.call('DEL', ARGV[5] .. sid)
      emit(run_key, stream, maxlen, run_id, 'step_cancelled', sid, 'CANCELLED', now, '{"terminated":true}')
    end
  end
end
redis.call('PUBLISH', KEYS[4], 'CANCELLING')
return out
"""
)

# KEYS: run, stream. ARGV: run_id, now, maxlen, data_json. Appends an operator action; a run
# that does not exist gets seq 0 (the action is still audited, by its action id).
_AUDIT = (
    _EMIT
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return emit(KEYS[1], KEYS[2], ARGV[3], ARGV[1], 'operator_action', '', '', ARGV[2], ARGV[4])
end
redis.call('XADD', KEYS[2], '*', 'run', ARGV[1], 'seq', 0, 'type', 'operator_action', 'step', '',
           'status', '', 'ts', ARGV[2], 'data', ARGV[4])
return 0
"""
)

# KEYS: run, stream. ARGV: run_id, now, maxlen, kind, data_json. Emits sla_<kind> once per run.
_SLA_MARK = (
    _EMIT
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'sla_' .. ARGV[4], ARGV[2]) == 0 then return 0 end
emit(KEYS[1], KEYS[2], ARGV[3], ARGV[1], 'sla_' .. ARGV[4], '', '', ARGV[2], ARGV[5])
return 1
"""
)

# KEYS: run, steps, lease, stream, attempts, controlled, control channel. ARGV: run_id, step,
# epoch, now, maxlen, error, critical, attempt_record_json. Fails a RUNNING step of this epoch
# whatever holds its lease, or a PENDING one of a fast-path task (its process is gone: killed
# at the hard time limit).
_KILLED = (
    _EMIT
    + """
local run_key, steps, lease, stream, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local run_id, step, epoch, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not redis.call('HGET', run_key, 'status') then return 0 end
local ss = redis.call('HGET', steps, step .. '|status')
if ss == 'RUNNING' then
  if redis.call('HGET', steps, step .. '|epoch') ~= epoch then return 0 end
elseif ss == 'PENDING' then
  -- a fast-path step killed before Redis was told it ran (workers/step.py)
  if redis.call('HGET', run_key, 'epoch') ~= epoch then return 0 end
  redis.call('HINCRBY', steps, step .. '|attempts', 1)
  redis.call('HSET', steps, step .. '|epoch', epoch)
else
  return 0
end
redis.call('DEL', lease)
redis.call('RPUSH', attempts, ARGV[8])
redis.call('HSET', steps, step .. '|status', 'FAILED', step .. '|error', ARGV[6], step .. '|finished_at', now)
redis.call('HINCRBY', run_key, 'settled', 1)
if ARGV[7] == '1' and not redis.call('HGET', run_key, 'halt') then
  redis.call('HSET', run_key, 'halt', 'failed', 'failed_step', step, 'error', ARGV[6])
  controlled(KEYS[6], KEYS[7], run_id, 'halt', now)
end
emit(run_key, stream, maxlen, run_id, 'step_failed', step, 'FAILED', now, ARGV[8])
return 1
"""
)

_REFRESH_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def now() -> str:
    return f"{time.time():.6f}"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def pack_batch(batch: list[list[Any]] | None) -> list[str]:
    """[events JSON, data texts...] for emit_batch: a data given as text travels as its own
    argument (the event names it by number), so it is not escaped into the list."""
    if not batch:
        return [""]
    texts: list[str] = []
    heads = []
    for etype, step, status, ts, data in batch:
        if isinstance(data, str):
            texts.append(data)
            data = len(texts)
        heads.append([etype, step, status, ts, data])
    return [dumps(heads), *texts]


class RunState:
    """All reads and writes of a run's hot state; one instance per process is enough."""

    def __init__(self, client: redis.Redis, keys: Keys, *, state_ttl: int, maxlen: int = 0):
        self.r = client
        self.keys = keys
        self.state_ttl = state_ttl
        self.maxlen = maxlen
        self._begin = client.register_script(_BEGIN)
        self._finish = client.register_script(_FINISH)
        self._run_once = client.register_script(_RUN_ONCE)
        self._transition = client.register_script(_TRANSITION)
        self._step_set = client.register_script(_STEP_SET)
        self._emit_batch = client.register_script(_EMIT_BATCH)
        self._refresh = client.register_script(_REFRESH_LEASE)
        self._restart = client.register_script(_RESTART)
        self._cancel = client.register_script(_CANCEL)
        self._audit = client.register_script(_AUDIT)
        self._sla_mark = client.register_script(_SLA_MARK)
        self._killed = client.register_script(_KILLED)

    # -- creation -----------------------------------------------------------------------------

    def create(
        self, run_id: str, fields: Mapping[str, Any], step_ids: Iterable[str], workflow_id: str
    ) -> None:
        """Write a PENDING run with PENDING steps and its run_created event, in one round trip."""
        ts = now()
        step_ids = list(step_ids)
        run_fields = {k: v if isinstance(v, str) else dumps(v) for k, v in fields.items()}
        run_fields.update(
            status=RunStatus.PENDING,
            created_at=ts,
            epoch="1",
            seq="1",
            total=str(len(step_ids)),
            settled="0",
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.run(run_id), mapping=run_fields)
        pipe.hset(
            self.keys.steps(run_id), mapping={step_field(s, "status"): "PENDING" for s in step_ids}
        )
        pipe.zadd(self.keys.runs, {run_id: float(ts)})
        pipe.zadd(self.keys.live, {run_id: float(ts)})  # the watchdog's work list until it ends
        pipe.zadd(self.keys.runs_of(workflow_id), {run_id: float(ts)})
        if fields.get("sla_seconds"):
            pipe.sadd(self.keys.sla_watch, run_id)
        xargs: dict[str, Any] = {"maxlen": self.maxlen, "approximate": True} if self.maxlen else {}
        pipe.xadd(
            self.keys.events,
            {
                "run": run_id,
                "seq": 1,
                "type": "run_created",
                "step": "",
                "status": "PENDING",
                "ts": ts,
                "data": dumps({k: fields[k] for k in ("workflow", "version") if k in fields}),
            },
            **xargs,
        )
        pipe.execute()

    # -- the step runtime's calls -------------------------------------------------------------

    def begin_step(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        intent: str,
        owner: str,
        lease_ttl: int,
        task_id: str,
        worker: str,
        reason: str = "",
        started: float | None = None,
    ) -> tuple[str, ...]:
        """(verdict, detail...): go/attempt, skipped, cancelled, paused, leased/holder,
        settled/status, adopt/status/output, stale, gone. ``intent="late"`` with ``started``:
        the step has been running since then (the fast path's begin, from the heartbeat)."""
        ts = f"{started:.6f}" if started is not None else now()
        res = self._begin(
            keys=[
                self.keys.run(run_id),
                self.keys.steps(run_id),
                self.keys.lease(run_id, step),
                self.keys.events,
            ],
            args=[
                run_id,
                step,
                str(epoch),
                intent,
                owner,
                ts,
                lease_ttl,
                self.maxlen,
                task_id,
                worker,
                reason,
            ],
        )
        out = tuple(_s(x) for x in res)
        return out if len(out) > 1 else (out[0], "")

    def finish_step(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        status: str,
        owner: str,
        output: str = "null",
        error: str = "",
        traceback: str = "",
        critical: bool = True,
        attempt: Mapping[str, Any],
        batch: list | None = None,
    ) -> str:
        head, *texts = pack_batch(batch)
        k = self.keys
        res = self._finish(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.lease(run_id, step),
                k.events,
                k.attempts(run_id),
                k.controlled,
                k.control_channel,
            ],
            args=[
                run_id,
                step,
                str(epoch),
                status,
                owner,
                now(),
                self.maxlen,
                output,
                error,
                traceback,
                "1" if critical else "0",
                dumps(attempt),
                head,
                self.state_ttl,
                *texts,
            ],
        )
        return _s(res)

    def run_once(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        status: str,
        started: float,
        output: str = "null",
        error: str = "",
        traceback: str = "",
        critical: bool = True,
        attempt: Mapping[str, Any],
        worker: str,
        task_id: str,
        batch: list | None = None,
    ) -> tuple[str, ...]:
        """Record a whole attempt (start and end) of a step that ran without begin_step:
        ('ok', attempt, run status, halt) or (stale|settled|leased|gone, detail). ``attempt``
        is the record without its number, which the script assigns."""
        head, *texts = pack_batch(batch)
        k = self.keys
        res = self._run_once(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.lease(run_id, step),
                k.events,
                k.attempts(run_id),
                k.controlled,
                k.control_channel,
            ],
            args=[
                run_id,
                step,
                str(epoch),
                status,
                f"{started:.6f}",
                now(),
                self.maxlen,
                output,
                error,
                traceback,
                "1" if critical else "0",
                dumps(attempt),
                worker,
                task_id,
                head,
                *texts,
            ],
        )
        return tuple(_s(x) for x in res)

    def fail_killed_step(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        error: str,
        critical: bool,
        attempt: Mapping[str, Any],
    ) -> bool:
        k = self.keys
        return bool(
            self._killed(
                keys=[
                    k.run(run_id),
                    k.steps(run_id),
                    k.lease(run_id, step),
                    k.events,
                    k.attempts(run_id),
                    k.controlled,
                    k.control_channel,
                ],
                args=[
                    run_id,
                    step,
                    str(epoch),
                    now(),
                    self.maxlen,
                    error,
                    "1" if critical else "0",
                    dumps(attempt),
                ],
            )
        )

    def refresh_lease(self, run_id: str, step: str, owner: str, ttl: int) -> bool:
        return bool(self._refresh(keys=[self.keys.lease(run_id, step)], args=[owner, ttl]))

    def emit(self, run_id: str, batch: list[list[Any]]) -> None:
        """Append events [type, step, status, ts, data_json] with the run's next seqs."""
        if batch:
            head, *texts = pack_batch(batch)
            self._emit_batch(
                keys=[self.keys.run(run_id), self.keys.events],
                args=[run_id, self.maxlen, head, *texts],
            )

    def set_step(
        self,
        run_id: str,
        step: str,
        status: str,
        etype: str,
        *,
        fields: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        expect: str = "",
    ) -> bool:
        """Set a step's status (and fields) with its event; with ``expect``, only if the step
        still has that status (False otherwise)."""
        res = self._step_set(
            keys=[self.keys.run(run_id), self.keys.steps(run_id), self.keys.events],
            args=[
                run_id,
                step,
                status,
                now(),
                self.maxlen,
                dumps(dict(fields or {})),
                etype,
                dumps(dict(data or {})),
                expect,
            ],
        )
        return bool(res)

    def transition(
        self,
        run_id: str,
        target: RunStatus,
        *,
        fields: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        sources: Iterable[str] | None = None,
    ) -> tuple[bool, str]:
        """Move the run to ``target`` if the transition table allows it from its current status.

        Returns (done, status before). The check and the write are one atomic script.
        """
        allowed = list(sources) if sources is not None else sources_of(target)
        res = self._transition(
            keys=[
                self.keys.run(run_id),
                self.keys.events,
                self.keys.settled_channel(run_id),
                self.keys.controlled,
                self.keys.control_channel,
                self.keys.live,
            ],
            args=[
                run_id,
                str(target),
                now(),
                self.maxlen,
                self.state_ttl,
                dumps(
                    {
                        k: v if isinstance(v, str) or v is None else dumps(v)
                        for k, v in (fields or {}).items()
                    }
                ),
                dumps(dict(data or {})),
                *allowed,
            ],
        )
        return _s(res[0]) == "ok", _s(res[1])

    def restart(
        self,
        run_id: str,
        target: RunStatus,
        *,
        sources: Iterable[str],
        reset: Iterable[str] = (),
        clear: Iterable[str] = (),
        data: Mapping[str, Any] | None = None,
    ) -> tuple[str, str, int]:
        """Atomically: check the status, bump the epoch, reset steps to PENDING, clear run fields.

        Returns (verdict 'ok'|'refused'|'gone', status before, new epoch).
        """
        k = self.keys
        res = self._restart(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.events,
                k.settled_channel(run_id),
                k.completed(run_id),
                k.attempts(run_id),
                k.controlled,
                k.control_channel,
                k.live,
            ],
            args=[
                run_id,
                now(),
                self.maxlen,
                str(target),
                "",
                dumps(list(reset)),
                dumps(list(clear)),
                dumps(dict(data or {})),
                *sources,
            ],
        )
        return _s(res[0]), _s(res[1]), int(_s(res[2]))

    def cancel(
        self,
        run_id: str,
        *,
        sources: Iterable[str],
        terminate: bool,
        data: Mapping[str, Any] | None = None,
    ) -> tuple[str, str, int, list[str]]:
        """Atomically move to CANCELLING with a new epoch; with ``terminate`` also mark running
        steps CANCELLED and return their Celery task ids (to revoke)."""
        k = self.keys
        res = self._cancel(
            keys=[
                k.run(run_id),
                k.steps(run_id),
                k.events,
                k.settled_channel(run_id),
                k.controlled,
                k.control_channel,
            ],
            args=[
                run_id,
                now(),
                self.maxlen,
                "1" if terminate else "0",
                k.lease(run_id, ""),
                dumps(dict(data or {})),
                *sources,
            ],
        )
        return _s(res[0]), _s(res[1]), int(_s(res[2])), [_s(t) for t in res[3:] if t]

    def audit(self, run_id: str, data: Mapping[str, Any]) -> int:
        return int(
            self._audit(
                keys=[self.keys.run(run_id), self.keys.events],
                args=[run_id, now(), self.maxlen, dumps(dict(data))],
            )
        )

    def sla_mark(self, run_id: str, kind: str, data: Mapping[str, Any]) -> bool:
        """Emit sla_warning / sla_breached for a run, at most once each."""
        return bool(
            self._sla_mark(
                keys=[self.keys.run(run_id), self.keys.events],
                args=[run_id, now(), self.maxlen, kind, dumps(dict(data))],
            )
        )

    def lease_holder(self, run_id: str, step: str) -> str | None:
        v = self.r.get(self.keys.lease(run_id, step))
        return _s(v) if v is not None else None

    # -- reads --------------------------------------------------------------------------------

    def read(
        self, run_id: str
    ) -> tuple[dict[str, str], dict[str, dict[str, str]], list[dict[str, Any]]] | None:
        """(run fields, {step: fields}, attempt records) in one round trip, or None if unknown."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.run(run_id))
        pipe.hgetall(self.keys.steps(run_id))
        pipe.lrange(self.keys.attempts(run_id), 0, -1)
        run, steps, attempts = pipe.execute()
        if not run:
            return None
        by_step: dict[str, dict[str, str]] = {}
        for k, v in steps.items():
            sid, _, name = _s(k).rpartition("|")
            by_step.setdefault(sid, {})[name] = _s(v)
        return ({_s(k): _s(v) for k, v in run.items()}, by_step, [json.loads(a) for a in attempts])

    def head(self, run_id: str) -> tuple[str, str, str] | None:
        """(status, epoch, halt) of a run in one HMGET, or None if unknown."""
        status, epoch, halt = self.r.hmget(self.keys.run(run_id), "status", "epoch", "halt")
        if status is None:
            return None
        return _s(status), _s(epoch), _s(halt)

    def run_fields(self, run_id: str, *names: str) -> list[str]:
        """Some fields of a run in one HMGET ("" for a missing field or an unknown run)."""
        return [_s(v) for v in self.r.hmget(self.keys.run(run_id), *names)]

    def step_deps(self, run_id: str, step: str) -> list[str]:
        """A step's depends_on, from the run's stored definition (long fan-in lists)."""
        raw = self.r.hget(self.keys.run(run_id), "definition")
        for s in json.loads(raw or "{}").get("steps", ()):
            if s["id"] == step:
                return list(s.get("depends_on") or ())
        return []

    def status(self, run_id: str) -> str | None:
        v = self.r.hget(self.keys.run(run_id), "status")
        return _s(v) if v is not None else None

    def completed_order(self, run_id: str) -> list[str]:
        return [_s(x) for x in self.r.lrange(self.keys.completed(run_id), 0, -1)]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))
