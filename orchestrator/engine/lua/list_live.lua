-- list_live: the live fields of a page of runs, and of the newest runs of an index between two
-- scores, in one round trip (the dashboard's run list: under load every round trip waits for
-- its turn on the web process's loop). Keys are built from the templates RunState passes,
-- which orchestrator/keys.py made: on a Redis Cluster only when the key prefix is a hash tag
-- (every canvasflow key in one slot; the index, passed as KEYS[1], routes the call there).
-- KEYS: the runs index
-- ARGV: the run key's head and tail around the id, the steps key's tail, low and high score of
--   the window
--   ("(<newest>" or "-inf", "<cursor score>" or "+inf"), window size (0: none), number of
--   fields, the fields (status first), then the ids of the page.
-- Returns {page, extra}: page = {{values}, {current steps}} per id given, in order (values all
--   false for a run not in Redis); extra = {{id, {values}, {current steps}}} for each run of the
--   window that is not on the page, newest first. Current steps: the steps RUNNING, RETRYING
--   or COMPENSATING of a run that is neither PENDING nor final.
-- include: constants
local index, head, run_tail, steps_tail = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local low, high, window, nf = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local fields = {}
for i = 1, nf do fields[i] = ARGV[7 + i] end
local function current(id)
  local out = {}
  local flat = redis.call('HGETALL', head .. id .. steps_tail)
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if string.sub(f, -7) == '|status' and is_active(v) then
      table.insert(out, string.sub(f, 1, -8))
    end
  end
  return out
end
local function read(id)
  local v = redis.call('HMGET', head .. id .. run_tail, unpack(fields))
  local st = v[1]
  if st and st ~= 'PENDING' and not is_final(st) then return {v, current(id)} end
  return {v, {}}
end
local page, seen = {}, {}
for i = 8 + nf, #ARGV do
  seen[ARGV[i]] = true
  table.insert(page, read(ARGV[i]))
end
local extra = {}
if window > 0 then
  for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', index, high, low, 'LIMIT', 0, window)) do
    if not seen[id] then
      local r = read(id)
      if r[1][1] then table.insert(extra, {id, r[1], r[2]}) end
    end
  end
end
return {page, extra}
