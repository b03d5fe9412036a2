-- An account's run of failed logins. KEYS[1]: hash {count, until (ms, Redis's
-- clock)}. ARGV[1] 'check': returns the ms the account stays locked (0: not).
-- ARGV[1] 'fail', then free, first (ms), max (ms), memory (ms): counts a
-- failure and returns the lock-out it starts (0: none), as
-- LockoutPolicy::lock_after computes it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'check' then
  local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or 0)
  return math.max(until_ms - now, 0)
end
local free, first, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
local lock = 0
local beyond = count - math.max(free, 1)
if beyond >= 0 then
  lock = math.min(first * 2 ^ math.min(beyond, 31), max)
  redis.call('HSET', KEYS[1], 'until', string.format('%d', now + lock))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return lock
