-- Mailbox quotas: what each user's unread offline messages add up to, kept
-- by triggers, so that a quota check reads one row instead of counting a
-- mailbox. `from_stranger` marks a message whose sender the recipient had not
-- accepted as a contact when it was stored (a tighter budget applies).
ALTER TABLE messages ADD COLUMN from_stranger BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE mailboxes (
    user_id        INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    messages       INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    from_strangers INTEGER NOT NULL DEFAULT 0
);

INSERT INTO mailboxes (user_id, messages, bytes)
SELECT receiver_id, COUNT(*), SUM(LENGTH(CAST(encrypted_content AS BLOB)))
FROM messages WHERE read_at IS NULL GROUP BY receiver_id;

CREATE TRIGGER mailboxes_on_insert AFTER INSERT ON messages WHEN NEW.read_at IS NULL
BEGIN
    INSERT INTO mailboxes (user_id, messages, bytes, from_strangers)
    VALUES (NEW.receiver_id, 1, LENGTH(CAST(NEW.encrypted_content AS BLOB)), NEW.from_stranger)
    ON CONFLICT (user_id) DO UPDATE SET
        messages = messages + 1,
        bytes = bytes + excluded.bytes,
        from_strangers = from_strangers + excluded.from_strangers;
END;

CREATE TRIGGER mailboxes_on_delete AFTER DELETE ON messages WHEN OLD.read_at IS NULL
BEGIN
    UPDATE mailboxes SET
        messages = messages - 1,
        bytes = bytes - LENGTH(CAST(OLD.encrypted_content AS BLOB)),
        from_strangers = from_strangers - OLD.from_stranger
    WHERE user_id = OLD.receiver_id;
END;

-- The previous release marks messages read instead of deleting them.
CREATE TRIGGER mailboxes_on_read AFTER UPDATE OF read_at ON messages
    WHEN OLD.read_at IS NULL AND NEW.read_at IS NOT NULL
BEGIN
    UPDATE mailboxes SET
        messages = messages - 1,
        bytes = bytes - LENGTH(CAST(OLD.encrypted_content AS BLOB)),
        from_strangers = from_strangers - OLD.from_stranger
    WHERE user_id = OLD.receiver_id;
END;
