-- Times are stored as RFC 3339 text in UTC.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL,
    -- Lowercase forms: uniqueness and look-ups ignore case.
    username_key  TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_seen     TEXT
);

-- One row per side: (user_id, friend_id) is user_id's view of friend_id.
-- 'pending' on user_id's side means friend_id asked and user_id has not answered.
CREATE TABLE contacts (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    friend_id  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'accepted')),
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) WITHOUT ROWID;

-- The reverse direction: "who has X as a contact" (visibility, notices).
CREATE INDEX contacts_by_friend ON contacts (friend_id, status, user_id);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    receiver_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    encrypted_content TEXT NOT NULL,
    sent_at           TEXT NOT NULL,
    read_at           TEXT
);

CREATE INDEX messages_unread ON messages (receiver_id, id) WHERE read_at IS NULL;

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
