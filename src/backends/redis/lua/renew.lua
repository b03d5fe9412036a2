-- KEYS: replicas, online, sightings, then conns per held entry. ARGV: replica,
-- lease ms, then (field, "ip port", count, user) per entry. Marks the replica
-- alive, renews (or, after Redis lost them, restores) what it holds, and sweeps
-- users whose lease lapsed.
local now = now_ms()
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 4, #KEYS do
  local a = 3 + (i - 4) * 4
  local user = ARGV[a + 3]
  local s = sighting(KEYS[3], user)
  if s and s.until_ms > now then
    put(KEYS[3], KEYS[2], user, s.addr, s.seen, now + lease)
  else
    put(KEYS[3], KEYS[2], user, ARGV[a + 1], string.format('%d', now), now + lease)
  end
  redis.call('HSETNX', KEYS[i], ARGV[a], ARGV[a + 2])
  redis.call('PEXPIRE', KEYS[i], lease)
end
-- At most 10,000 a run, in slices Lua can unpack.
for _ = 1, 10 do
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  if #gone == 0 then break end
  redis.call('HDEL', KEYS[3], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return 0
