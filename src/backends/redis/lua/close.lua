-- KEYS: conns, replicas, sightings. ARGV: field, user, seen ms.
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
seen(KEYS[3], ARGV[2], ARGV[3])
return total(live_fields(KEYS[1], KEYS[2]))
