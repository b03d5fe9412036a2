-- Message ids are now given when the server accepts a message (from the
-- sequence, before it is relayed or stored), so that a message relayed live
-- and stored later keeps the id its sender and recipient were told.
-- `receipt`: the sender gave a client id and is told when the recipient
-- acknowledges the message.
ALTER TABLE messages ADD COLUMN receipt BOOLEAN NOT NULL DEFAULT FALSE;
