-- emit_batch: append events to the stream with the run's next sequence numbers.
-- KEYS: run, stream
-- ARGV: run_id, maxlen, batch_json, then the data texts of the batch (see emit_batch)
-- Returns 1, or 0 when the run is gone (nothing appended).
-- include: common.lua
if not redis.call('HGET', KEYS[1], 'status') then return 0 end
emit_batch(KEYS[1], KEYS[2], ARGV[2], ARGV[1], ARGV[3], 3)
return 1
