-- KEYS: sightings, conns, replicas, online. ARGV: lease ms, field, "ip port"
-- (used when no live address is known), seen ms, user.
local now = now_ms()
local s = sighting(KEYS[1], ARGV[5])
local addr = (s and s.until_ms > now) and s.addr or ARGV[3]
put(KEYS[1], KEYS[4], ARGV[5], addr, ARGV[4], now + tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return total(live_fields(KEYS[2], KEYS[3]))
