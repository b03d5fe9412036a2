-- KEYS: tokens of one user (sorted set jti -> expiry ms). ARGV: jti, expiry
-- ms, now ms. Records the token, forgets expired ones, and keeps the set as
-- long as its last token.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 10000)
return 0
