-- leased: whether any RUNNING or COMPENSATING step of a run holds a live lease.
-- KEYS: steps, and the items of mapped steps (optional)
-- ARGV: lease key prefix ("<prefix>:lease:<run>:")
-- Returns 1 or 0.
for _, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if string.sub(f, -7) == '|status' and (v == 'RUNNING' or v == 'COMPENSATING') then
      if redis.call('EXISTS', ARGV[1] .. string.sub(f, 1, -8)) == 1 then return 1 end
    end
  end
end
return 0
