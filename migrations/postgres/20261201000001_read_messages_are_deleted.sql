-- A message is deleted once read, ciphertext and all; the ciphertext of the
-- messages read before goes now. `read_at` stays for one release, so that
-- replicas of the previous one keep working during a rolling update (the rows
-- they mark read meanwhile expire with the others); the next release drops it.
DELETE FROM messages WHERE read_at IS NOT NULL;
-- Expiry deletes the oldest first.
CREATE INDEX messages_by_age ON messages (sent_at);
