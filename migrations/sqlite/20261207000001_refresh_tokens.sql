-- Sessions that last: each login is a session of refresh tokens, rotated at
-- every use. Spent tokens stay until the session lapses, so that presenting
-- one again is recognised as a reuse and ends the whole session.
-- Times are RFC 3339 text in UTC.
CREATE TABLE login_sessions (
    id        TEXT PRIMARY KEY,
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- When its newest refresh token lapses unused.
    lapses_at TEXT NOT NULL
);
CREATE INDEX login_sessions_by_user ON login_sessions (user_id);
CREATE INDEX login_sessions_lapse ON login_sessions (lapses_at);

CREATE TABLE refresh_tokens (
    -- SHA-256 of the token, hex: the token itself is never stored.
    token_hash        TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES login_sessions (id) ON DELETE CASCADE,
    -- The access token issued with it, revoked when the session ends.
    access_jti        TEXT NOT NULL,
    access_expires_at TEXT NOT NULL,
    lapses_at         TEXT NOT NULL,
    spent             INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_by_access ON refresh_tokens (access_jti);
