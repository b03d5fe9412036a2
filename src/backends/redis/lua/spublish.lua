-- KEYS: a sharded channel. ARGV: the message. Answers how many subscribers of
-- this node received it. SPUBLISH from a script because a replica refuses a
-- script (MOVED, to its master) where it would run a bare SPUBLISH itself:
-- then it answers 0 while the master's subscribers still get the message, and
-- a client whose slot map is stale (a master turned replica after a failover
-- or a resharding) would take a delivered message for one connected nowhere.
return redis.call('SPUBLISH', KEYS[1], ARGV[1])
