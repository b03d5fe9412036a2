CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL,
    -- Lowercase forms: uniqueness and look-ups ignore case.
    username_key  TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_seen     TIMESTAMPTZ
);

-- Search is a substring match on username_key; text_pattern_ops serves prefix
-- matches, and pg_trgm (where the operator installs it) would serve the rest.
CREATE INDEX users_username_key_pattern ON users (username_key text_pattern_ops);

-- One row per side: (user_id, friend_id) is user_id's view of friend_id.
-- 'pending' on user_id's side means friend_id asked and user_id has not answered.
CREATE TABLE contacts (
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    friend_id  BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'accepted')),
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

-- The reverse direction: "who has X as a contact" (visibility, notices).
CREATE INDEX contacts_by_friend ON contacts (friend_id, status, user_id);

CREATE TABLE messages (
    id                BIGSERIAL PRIMARY KEY,
    sender_id         BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    receiver_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    encrypted_content TEXT NOT NULL,
    sent_at           TIMESTAMPTZ NOT NULL,
    read_at           TIMESTAMPTZ
);

-- The inbox: a user's unread messages in order; read ones leave the index.
CREATE INDEX messages_unread ON messages (receiver_id, id) WHERE read_at IS NULL;

-- Used when REDIS_URL is unset (one replica on Postgres); with Redis, revoked
-- tokens live there.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
