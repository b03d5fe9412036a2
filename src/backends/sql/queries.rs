//! The SQL both stores run, written once: every statement is a constant
//! here, with `$N` placeholders (which SQLite binds by number too). A
//! statement whose text differs between the dialects is written once as a
//! small macro over the differing piece, with a constant per dialect.

/// The columns of a user, as `User` reads them: of `u`, or with the prefix
/// given (`""` in a `RETURNING` clause, where SQLite takes no alias).
macro_rules! user_columns {
    () => {
        user_columns!("u.")
    };
    ($p:literal) => {
        concat!(
            $p,
            "id, ",
            $p,
            "username, ",
            $p,
            "email, ",
            $p,
            "public_key, ",
            $p,
            "created_at, ",
            $p,
            "last_seen, ",
            $p,
            "key_changed_at"
        )
    };
}

/// The columns of a user in a JSON object, for the aggregating queries.
macro_rules! user_json_fields {
    () => {
        "'id', u.id, 'username', u.username, 'email', u.email, 'public_key', u.public_key, \
         'created_at', u.created_at, 'last_seen', u.last_seen, 'key_changed_at', u.key_changed_at"
    };
}

/// The condition shared by the aggregating queries: `$1`'s accepted contacts
/// whose address `$1` may see (`$2`: visibility is open).
macro_rules! visible_contacts_where {
    () => {
        " FROM contacts c JOIN users u ON u.id = c.friend_id \
         WHERE c.user_id = $1 AND c.status = 'accepted' \
           AND ($2 OR EXISTS (SELECT 1 FROM contacts r \
                              WHERE r.user_id = c.friend_id AND r.friend_id = c.user_id \
                                AND r.status = 'accepted'))"
    };
}

/// The columns of a message, as `Message` reads them.
macro_rules! message_columns {
    () => {
        "id, sender_id, receiver_id, encrypted_content, sent_at"
    };
}

/// The ids of one page of messages (`Page`): those matching `$condition`,
/// oldest first, at most `$limit` (a placeholder) of them, up to and including
/// the one whose content reaches `$max_bytes` (a placeholder) with those
/// before it. Then only those are locked (`$lock`, Postgres: `FOR UPDATE SKIP
/// LOCKED`), in a level of their own since a window function may not stand
/// beside a lock: locking every candidate held rows past the page until the
/// statement ended, and a push claiming the next page meanwhile passed them
/// by and went on beyond them, leaving them to no one.
macro_rules! page_ids {
    ($condition:expr, $limit:literal, $max_bytes:literal, $lock:literal) => {
        concat!(
            "SELECT id FROM messages WHERE id IN (",
            "SELECT id FROM (SELECT id, SUM(OCTET_LENGTH(encrypted_content)) OVER (ORDER BY id)
                - OCTET_LENGTH(encrypted_content) AS earlier
                FROM (SELECT id, encrypted_content FROM messages WHERE ",
            $condition,
            " ORDER BY id LIMIT ",
            $limit,
            ") AS candidates) AS page WHERE earlier < ",
            $max_bytes,
            ") ORDER BY id",
            $lock
        )
    };
}
/// A message (of table or alias `$t`) that no push holds a live claim on at
/// `$now` (a placeholder).
macro_rules! unclaimed {
    ($t:literal, $now:literal) => {
        concat!(
            "(",
            $t,
            ".claimed_until IS NULL OR ",
            $t,
            ".claimed_until <= ",
            $now,
            ")"
        )
    };
}

/// `Store::ping`.
pub const PING: &str = "SELECT 1";

/// `Store::create_user`.
pub const CREATE_USER: &str = concat!(
    "INSERT INTO users (username, username_key, username_skeleton, email, email_key,
        password_hash, public_key, created_at, username_shape)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
        WHERE NOT EXISTS (SELECT 1 FROM retired_usernames
        WHERE username_skeleton IN ($3, $9) AND until > $8)
        RETURNING ",
    user_columns!("")
);

/// `Store::credentials`.
pub const CREDENTIALS: &str =
    "SELECT id, username, password_hash FROM users WHERE username_key = $1";

/// `Store::user_by_id`.
pub const USER_BY_ID: &str = concat!("SELECT ", user_columns!(), " FROM users u WHERE u.id = $1");

/// `Store::user_by_username`.
pub const USER_BY_USERNAME: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.username_key = $1"
);

/// `Store::search_users`.
pub const SEARCH_USERS: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u
        WHERE u.username_key LIKE $1 ESCAPE '\\' AND u.id <> $2
        ORDER BY u.username_key LIMIT $3"
);

/// `Store::touch_last_seen`.
pub const TOUCH_LAST_SEEN: &str = "UPDATE users SET last_seen = $1 WHERE id = $2";

/// `Store::unkeyed_users`.
pub const UNKEYED_USERS: &str = "SELECT id, username FROM users
    WHERE (username_skeleton IS NULL OR username_shape IS NULL) AND id > $1
    ORDER BY id LIMIT $2";

/// `Store::set_username_keys`.
pub const SET_USERNAME_KEYS: &str =
    "UPDATE users SET username_key = $1, username_skeleton = $2, username_shape = $4
        WHERE id = $3";

/// `Store::set_password_hash`.
pub const SET_PASSWORD_HASH: &str = "UPDATE users SET password_hash = $1 WHERE id = $2";

/// `Store::set_public_key`.
pub const SET_PUBLIC_KEY: &str = concat!(
    "UPDATE users SET public_key = $1, key_changed_at = $2 WHERE id = $3 RETURNING ",
    user_columns!("")
);

/// `Store::delete_user`: keeps the deleted user's name (its skeleton and shape) from others until `$2`.
pub const RETIRE_USERNAMES: &str = "INSERT INTO retired_usernames (username_skeleton, until)
    SELECT username_skeleton, $2 FROM users WHERE id = $1 AND username_skeleton IS NOT NULL
    UNION SELECT username_shape, $2 FROM users WHERE id = $1 AND username_shape IS NOT NULL
    ON CONFLICT (username_skeleton) DO UPDATE SET until = EXCLUDED.until";

/// `Store::delete_user`: everyone with a contact row to or from `$1`.
pub const RELATED_USERS: &str = "SELECT friend_id FROM contacts WHERE user_id = $1
    UNION SELECT user_id FROM contacts WHERE friend_id = $1";

/// `Store::delete_user`: the user, and with it (`ON DELETE CASCADE`) its contacts, requests, messages and mailbox.
pub const DELETE_USER: &str = "DELETE FROM users WHERE id = $1";

/// `Store::add_contact`: accepted on the owner's side (a pending request from the other becomes accepted); no row when it was a contact already.
pub const ADD_CONTACT: &str =
    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'accepted', $3)
        ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'
        WHERE contacts.status = 'pending'
        RETURNING created_at";

/// `Store::add_contact`: the request on the other's side, unless it has a row already.
pub const REQUEST_CONTACT: &str =
    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'pending', $3)
        ON CONFLICT (user_id, friend_id) DO NOTHING";

/// `Store::contacts`.
pub const CONTACTS: &str = concat!(
    "SELECT ",
    user_columns!(),
    ", c.status, c.created_at AS contact_created_at
        FROM contacts c JOIN users u ON u.id = c.friend_id
        WHERE c.user_id = $1 AND c.status = 'accepted'
        ORDER BY u.username_key LIMIT $2 OFFSET $3"
);

/// `Store::pending_requests`.
pub const PENDING_REQUESTS: &str = concat!(
    "SELECT ",
    user_columns!(),
    ", c.status, c.created_at AS contact_created_at
        FROM contacts c JOIN users u ON u.id = c.friend_id
        WHERE c.user_id = $1 AND c.status = 'pending'
        ORDER BY c.created_at, u.id"
);

/// `Store::accept_request`: the pending request becomes accepted.
pub const ACCEPT_REQUEST: &str = "UPDATE contacts SET status = 'accepted'
    WHERE user_id = $1 AND friend_id = $2 AND status = 'pending'
    RETURNING created_at";

/// `Store::accept_request`: accepted on the requester's side too.
pub const ACCEPT_BACK: &str =
    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'accepted', $3)
        ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'";

/// `Store::remove_contact`.
pub const REMOVE_CONTACT: &str = "DELETE FROM contacts
    WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)";

/// `Store::visible_user`.
pub const VISIBLE_USER: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u
        WHERE u.username_key = $1
        AND ($2 OR u.id = $3 OR EXISTS (SELECT 1 FROM contacts r
        WHERE r.user_id = u.id AND r.friend_id = $3
        AND r.status = 'accepted'))"
);

/// `Store::watchers`.
pub const WATCHERS: &str =
    "SELECT user_id FROM contacts WHERE friend_id = $1 AND status = 'accepted'";

/// `Store::consented`.
pub const CONSENTED: &str =
    "SELECT friend_id FROM contacts WHERE user_id = $1 AND status = 'accepted'";

/// `Store::consenting`, a `QueryBuilder` prefix (the viewer and the subjects' ids follow).
pub const CONSENTING: &str =
    "SELECT user_id FROM contacts WHERE status = 'accepted' AND friend_id = ";

/// `Store::store_messages`, a `QueryBuilder` prefix (the recipients' ids follow): a mailbox row for each recipient that exists.
pub const ENSURE_MAILBOXES: &str =
    "INSERT INTO mailboxes (user_id) SELECT id FROM users WHERE id IN ";

/// `Store::store_messages`, a `QueryBuilder` prefix (the recipients' ids follow): their mailboxes' counts.
pub const MAILBOX_ROWS: &str =
    "SELECT user_id, messages, bytes, from_strangers FROM mailboxes WHERE user_id IN ";

/// `Store::store_messages`, a `QueryBuilder` prefix (the recipients' and the senders' ids follow): which recipients accepted which senders.
pub const ACCEPTED_SENDERS: &str =
    "SELECT user_id, friend_id FROM contacts WHERE status = 'accepted' AND user_id IN ";

/// `Store::store_messages`, a `QueryBuilder` prefix (the rows follow).
pub const INSERT_MESSAGES: &str = "INSERT INTO messages (id, sender_id, receiver_id, encrypted_content, sent_at, \
                     from_stranger, receipt, claimed_until) ";

/// `Store::mailbox_usage`.
pub const MAILBOX_USAGE: &str =
    "SELECT messages, bytes, from_strangers FROM mailboxes WHERE user_id = $1";

/// `Store::peek_unread`.
pub const PEEK_UNREAD: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE id IN (",
    page_ids!(
        concat!(
            "receiver_id = $1 AND read_at IS NULL AND id > $4 AND ",
            unclaimed!("messages", "$3")
        ),
        "$2",
        "$5",
        ""
    ),
    ") ORDER BY id"
);

/// `Store::release_claims`, a `QueryBuilder` prefix (the recipient and the ids follow).
pub const RELEASE_CLAIMS: &str = "UPDATE messages SET claimed_until = NULL WHERE receiver_id = ";

/// `Store::renew_claims`, a `QueryBuilder` prefix (the time, the recipient and the ids follow).
pub const RENEW_CLAIMS: &str = "UPDATE messages SET claimed_until = ";

/// `Store::delete_read`, a `QueryBuilder` prefix (the ids and the (recipient, id) pairs follow).
pub const DELETE_READ: &str = "DELETE FROM messages WHERE id IN (";

/// `Store::expire_messages`.
pub const EXPIRE_MESSAGES: &str =
    "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE sent_at < $1
        ORDER BY sent_at LIMIT $2)";

/// `Store::claim_unread`, with `$skip_locked` after the candidates it locks.
macro_rules! claim_unread {
    ($skip_locked:literal) => {
        concat!(
            "UPDATE messages SET claimed_until = $2 WHERE id IN (",
            page_ids!(
                concat!(
                    "receiver_id = $1 AND read_at IS NULL AND id > $6 AND ($5 OR ",
                    unclaimed!("messages", "$3"),
                    ")"
                ),
                "$4",
                "$7",
                $skip_locked
            ),
            ") AND read_at IS NULL AND ($5 OR ",
            unclaimed!("messages", "$3"),
            ") RETURNING ",
            message_columns!(),
            ",
                (SELECT username FROM users u WHERE u.id = messages.sender_id)
                AS sender_username"
        )
    };
}
pub const CLAIM_UNREAD_SQLITE: &str = claim_unread!("");
/// Rows another statement holds are passed by.
pub const CLAIM_UNREAD_POSTGRES: &str = claim_unread!(" FOR UPDATE SKIP LOCKED");

/// `Store::take_unread`, with `$skip_locked` after the candidates it locks.
macro_rules! take_unread {
    ($skip_locked:literal) => {
        concat!(
            "DELETE FROM messages WHERE id IN (",
            page_ids!(
                concat!(
                    "receiver_id = $1 AND read_at IS NULL AND id > $4 AND ",
                    unclaimed!("messages", "$3")
                ),
                "$2",
                "$5",
                $skip_locked
            ),
            ") AND ",
            unclaimed!("messages", "$3"),
            " RETURNING ",
            message_columns!()
        )
    };
}
pub const TAKE_UNREAD_SQLITE: &str = take_unread!("");
/// Rows another statement holds are passed by.
pub const TAKE_UNREAD_POSTGRES: &str = take_unread!(" FOR UPDATE SKIP LOCKED");

/// `Store::visible_contacts` in SQLite: one row holding a JSON array.
pub const VISIBLE_CONTACTS_SQLITE: &str = concat!(
    "SELECT json_group_array(json_object(",
    user_json_fields!(),
    "))",
    visible_contacts_where!()
);
/// `Store::visible_contacts` in Postgres: one row holding a JSON array.
pub const VISIBLE_CONTACTS_POSTGRES: &str = concat!(
    "SELECT COALESCE(json_agg(json_build_object(",
    user_json_fields!(),
    ")), '[]')::text",
    visible_contacts_where!()
);
/// The end of `Store::store_messages`'s insert: the rows it stored.
pub const RETURNING_MESSAGES: &str = concat!(" RETURNING ", message_columns!());
/// Locks the mailbox rows a quota check reads (Postgres; SQLite's one
/// writer needs no lock).
pub const FOR_UPDATE: &str = " FOR UPDATE";
