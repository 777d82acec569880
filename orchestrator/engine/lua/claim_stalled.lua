-- claim_stalled: the watchdog claims a stalled run for re-dispatch if it has not moved since
-- it was judged (same seq, same status): bumps the epoch (a redispatch move: the status stays),
-- appends run_redispatched, forgets what the watchdog saw of it.
-- KEYS: run, stream, controlled, control channel, watchdog hash
-- ARGV: run_id, now, maxlen, expected seq, expected status, data_json (the epoch is added)
-- Returns {'ok', status, epoch} or {'moved' | 'refused' | 'gone', status, '0'}.
-- include: common.lua
local run_key, stream = KEYS[1], KEYS[2]
local run_id, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local st = redis.call('HGET', run_key, 'status')
if not st then return {'gone', '', '0'} end
if st ~= ARGV[5] or redis.call('HGET', run_key, 'seq') ~= ARGV[4] then return {'moved', st, '0'} end
local before, epoch = new_epoch(run_key, 'redispatch', st)
if not before then return epoch end
local data = cjson.decode(ARGV[6])
data['epoch'] = epoch
emit(run_key, stream, maxlen, run_id, 'run_redispatched', '', st, now, cjson.encode(data))
controlled(KEYS[3], KEYS[4], run_id, 'restart', now)
redis.call('HDEL', KEYS[5], run_id)
return {'ok', st, tostring(epoch)}
