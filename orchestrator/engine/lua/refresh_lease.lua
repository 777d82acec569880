-- refresh_lease: extend a step's lease, if this owner still holds it.
-- KEYS: lease
-- ARGV: owner, ttl
-- Returns 1 when extended, 0 when the lease is gone or held by another.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
