-- Account controls and lookalike names.

-- Uniqueness of usernames goes by their confusable skeleton (UTS #39) of the
-- NFKC case-folded name; `username_key` becomes that folded name (it was the
-- lowercase one). Users registered before get both when a server of this
-- release starts (it takes Unicode tables SQL does not have).
ALTER TABLE users ADD COLUMN username_skeleton TEXT;
CREATE UNIQUE INDEX users_username_skeleton ON users (username_skeleton);

-- When the user last published a new public key; NULL: never since registering.
ALTER TABLE users ADD COLUMN key_changed_at TIMESTAMPTZ;

-- Names of deleted accounts, which nobody may register until `until`.
CREATE TABLE retired_usernames (
    username_skeleton TEXT PRIMARY KEY,
    until             TIMESTAMPTZ NOT NULL
);

-- Tokens issued and not yet expired, so that all of a user's tokens can be
-- revoked at once (password change, log out everywhere). Used when REDIS_URL
-- is unset; with Redis they live there, beside the revoked ones.
CREATE TABLE issued_tokens (
    jti        TEXT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX issued_tokens_by_user ON issued_tokens (user_id);
CREATE INDEX issued_tokens_expiry ON issued_tokens (expires_at);
