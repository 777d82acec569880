-- claim_item: the next item of a mapped step's lane (max_parallel): the next unclaimed index of
-- this dispatch's todo list. The claim made after a given item (or at a lane's start) is kept,
-- so a lane's message delivered again claims the same next item, never one more.
-- KEYS: run, map
-- ARGV: step, epoch, after ("L<lane>" at a lane's start, else the item index just done)
-- Returns the item index, -1 when none is left (or the run stops starting items), -2 stale.
local run_key, map = KEYS[1], KEYS[2]
local step, epoch, after = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', run_key, 'epoch') ~= epoch then return -2 end
local f = step .. '|after|' .. epoch .. '|' .. after
local j = redis.call('HGET', map, f)
if j then return tonumber(j) end
local st = redis.call('HGET', run_key, 'status')
local halt = redis.call('HGET', run_key, 'halt')
if (st ~= 'RUNNING' and st ~= 'PENDING') or (halt and halt ~= '') then return -1 end
local k = redis.call('HINCRBY', map, step .. '|cursor|' .. epoch, 1)
local m = tonumber(redis.call('HGET', map, step .. '|m|' .. epoch) or '0')
if k > m then
  redis.call('HSET', map, f, -1)
  return -1
end
j = redis.call('HGET', map, step .. '|todo|' .. epoch .. '|' .. (k - 1))
redis.call('HSET', map, f, j)
return tonumber(j)
