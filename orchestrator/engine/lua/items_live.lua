-- items_live: the items of a run (every mapped step) by status, and which RUNNING ones hold a
-- live lease.
-- KEYS: items
-- ARGV: lease key prefix
-- Returns a flat list: id, status, alive ('1' | '0'), ...
local flat = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if string.sub(f, -7) == '|status' then
    local id = string.sub(f, 1, -8)
    local alive = '0'
    if v == 'RUNNING' and redis.call('EXISTS', ARGV[1] .. id) == 1 then alive = '1' end
    table.insert(out, id); table.insert(out, v); table.insert(out, alive)
  end
end
return out
