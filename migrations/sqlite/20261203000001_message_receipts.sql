-- Message ids are now given when the server accepts a message (from a block
-- reserved in sqlite_sequence, before it is relayed or stored), so that a
-- message relayed live and stored later keeps the id its sender and recipient
-- were told. `receipt`: the sender gave a client id and is told when the
-- recipient acknowledges the message.
ALTER TABLE messages ADD COLUMN receipt INTEGER NOT NULL DEFAULT 0;
-- The reservations start from the ids given so far.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'messages', COALESCE((SELECT MAX(id) FROM messages), 0)
WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages');
