-- KEYS: sightings, conns, replicas, online. ARGV: jti ('' for every token),
-- user, seen ms. Returns 1 when another token still holds a connection (the
-- user stays online), else ends the lease.
for _, f in ipairs(live_fields(KEYS[2], KEYS[3])) do
  local jti = string.sub(f[1], string.find(f[1], '|', 1, true) + 1)
  if ARGV[1] ~= '' and jti ~= ARGV[1] then
    seen(KEYS[1], ARGV[2], ARGV[3])
    return 1
  end
end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 0
