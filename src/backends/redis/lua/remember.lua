-- KEYS[1]: a sender's client id; ARGV: the message id, the window (ms).
-- Answers the id the client id names already, or names this one and answers
-- nil.
local held = redis.call('GET', KEYS[1])
if held then
  return tonumber(held)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
