-- KEYS[1]: a sender's client id; ARGV[1]: a message id. Forgets the client id
-- if it still names that message.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
