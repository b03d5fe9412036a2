-- A second lookalike key: the confusable skeleton (UTS #39) of the name as
-- written, then case-folded. The first one folds case before the skeleton,
-- which hides a capital I that looks like an l (`aIice` beside `alice`); this
-- one catches it. Both are unique. Users registered before get theirs when a
-- server of this release starts.
ALTER TABLE users ADD COLUMN username_shape TEXT;
CREATE UNIQUE INDEX users_username_shape ON users (username_shape);
