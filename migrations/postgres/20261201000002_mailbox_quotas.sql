-- Mailbox quotas: what each user's unread offline messages add up to, kept
-- by triggers, so that a quota check reads one row instead of counting a
-- mailbox. `from_stranger` marks a message whose sender the recipient had not
-- accepted as a contact when it was stored (a tighter budget applies).
ALTER TABLE messages ADD COLUMN from_stranger BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE mailboxes (
    user_id        BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    messages       BIGINT NOT NULL DEFAULT 0,
    bytes          BIGINT NOT NULL DEFAULT 0,
    from_strangers BIGINT NOT NULL DEFAULT 0
);

INSERT INTO mailboxes (user_id, messages, bytes)
SELECT receiver_id, COUNT(*), SUM(OCTET_LENGTH(encrypted_content))
FROM messages WHERE read_at IS NULL GROUP BY receiver_id;

-- Statement-level: one grouped update per statement, however many rows, in
-- user order (so that concurrent statements lock mailboxes in one order).
CREATE FUNCTION mailboxes_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mailboxes AS m (user_id, messages, bytes, from_strangers)
    SELECT receiver_id, COUNT(*), SUM(OCTET_LENGTH(encrypted_content)),
           COUNT(*) FILTER (WHERE from_stranger)
    FROM added WHERE read_at IS NULL GROUP BY receiver_id ORDER BY receiver_id
    ON CONFLICT (user_id) DO UPDATE SET
        messages = m.messages + EXCLUDED.messages,
        bytes = m.bytes + EXCLUDED.bytes,
        from_strangers = m.from_strangers + EXCLUDED.from_strangers;
    RETURN NULL;
END $$;

CREATE FUNCTION mailboxes_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM mailboxes WHERE user_id IN (SELECT receiver_id FROM removed)
    ORDER BY user_id FOR UPDATE;
    UPDATE mailboxes AS m SET
        messages = m.messages - gone.messages,
        bytes = m.bytes - gone.bytes,
        from_strangers = m.from_strangers - gone.from_strangers
    FROM (SELECT receiver_id, COUNT(*) AS messages,
                 SUM(OCTET_LENGTH(encrypted_content)) AS bytes,
                 COUNT(*) FILTER (WHERE from_stranger) AS from_strangers
          FROM removed WHERE read_at IS NULL GROUP BY receiver_id) AS gone
    WHERE m.user_id = gone.receiver_id;
    RETURN NULL;
END $$;

CREATE TRIGGER mailboxes_on_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION mailboxes_add();
CREATE TRIGGER mailboxes_on_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION mailboxes_remove();
-- The previous release marks messages read instead of deleting them: the old
-- rows leave the mailbox and the new ones (read or not) enter it again.
CREATE TRIGGER mailboxes_on_update_remove AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION mailboxes_remove();
CREATE TRIGGER mailboxes_on_update_add AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION mailboxes_add();
