-- KEYS: tokens of one user (sorted set jti -> expiry ms). ARGV: now ms, the
-- jti to keep ('' for none). Forgets expired tokens and answers the others
-- but the one kept, as jti, expiry, jti, expiry... Their revoked-token keys
-- live elsewhere on a cluster: the caller sets those, then forgets the tokens.
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local tokens = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local revoked = {}
for i = 1, #tokens, 2 do
  if tokens[i] ~= ARGV[2] then
    revoked[#revoked + 1] = tokens[i]
    revoked[#revoked + 1] = tokens[i + 1]
  end
end
return revoked
