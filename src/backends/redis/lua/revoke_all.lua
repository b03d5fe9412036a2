-- KEYS: tokens of one user (sorted set jti -> expiry ms). ARGV: now ms, the
-- jti to keep ('' for none), the prefix of revoked-token keys. Revokes every
-- unexpired token but the one kept, each until a little after it expires (as
-- a single revocation does), and forgets them.
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local tokens = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #tokens, 2 do
  local jti, expires = tokens[i], tonumber(tokens[i + 1])
  if jti ~= ARGV[2] then
    redis.call('SET', ARGV[3] .. jti, 1, 'PX', math.max(expires - now, 1000) + 10000)
    redis.call('ZREM', KEYS[1], jti)
  end
end
return 0
