//! The SQL backends: SQLite (the embedded default) and Postgres (shared by
//! replicas). Both run one SQL text, with `$N` placeholders (which SQLite binds
//! by number too): [`store_methods!`] writes the `Store` methods inside each
//! backend's own `impl Store for …` block.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
};

use chrono::{DateTime, Utc};
use futures_util::{FutureExt, future::BoxFuture};

use sqlx::FromRow as _;

use crate::{
    domain::UserId,
    metrics,
    revocation::RevocationError,
    store::{
        Admission, Contact, ContactStatus, MailboxQuota, MailboxUsage, NewMessage, StoreError,
        StoreResult, User,
    },
};

pub mod postgres;
pub mod sqlite;

/// Classifies a database error; pure, so that counting it stays with [`run`].
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.into()),
            // A row refers to a user that is gone: its account was deleted meanwhile.
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => Self::NoSuchUser,
            other => Self::Other(other.into()),
        }
    }
}

/// Runs one store operation: boxes it for the trait, and counts a failure of
/// the database (not an outcome such as a duplicate name) in
/// `secchat_backend_errors_total{backend="store"}`.
pub fn run<'a, T: Send + 'a>(
    work: impl Future<Output = StoreResult<T>> + Send + 'a,
) -> BoxFuture<'a, StoreResult<T>> {
    work.inspect(|result| {
        if let Err(StoreError::Unavailable(_) | StoreError::Other(_)) = result {
            metrics::backend_error(metrics::Backend::Store);
        }
    })
    .boxed()
}

/// A message id from the block a store holds (`free`), refilling the block
/// (`refill`, one caller at a time) when it is empty.
pub async fn next_id<Fut>(
    free: impl Fn() -> Option<i64>,
    refilling: &tokio::sync::Mutex<()>,
    refill: impl Fn() -> Fut,
) -> StoreResult<i64>
where
    Fut: Future<Output = StoreResult<()>>,
{
    loop {
        if let Some(id) = free() {
            return Ok(id);
        }
        let _one_at_a_time = refilling.lock().await;
        if let Some(id) = free() {
            return Ok(id);
        }
        refill().await?;
    }
}

/// A failed revocation query, counted like any store failure.
fn revocation_failed(err: sqlx::Error) -> RevocationError {
    metrics::backend_error(metrics::Backend::Store);
    RevocationError(err.into())
}

/// Records a revoked token, dropping those that expired anyway.
async fn insert_revocation<'e, E>(
    db: E,
    jti: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), RevocationError>
where
    E: sqlx::Executor<'e> + Copy,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
    for<'q> &'q str: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
{
    sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
        .bind(Utc::now())
        .execute(db)
        .await
        .map_err(revocation_failed)?;
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(expires_at)
    .execute(db)
    .await
    .map_err(revocation_failed)?;
    Ok(())
}

/// Records an issued token, dropping the records of expired ones.
async fn insert_issued<'e, E>(
    db: E,
    user: UserId,
    jti: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), RevocationError>
where
    E: sqlx::Executor<'e> + Copy,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
    for<'q> &'q str: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
    for<'q> i64: sqlx::Encode<'q, E::Database> + sqlx::Type<E::Database>,
{
    sqlx::query("DELETE FROM issued_tokens WHERE expires_at < $1")
        .bind(Utc::now())
        .execute(db)
        .await
        .map_err(revocation_failed)?;
    sqlx::query("INSERT INTO issued_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(jti)
        .bind(user)
        .bind(expires_at)
        .execute(db)
        .await
        .map_err(revocation_failed)?;
    Ok(())
}

/// Moves every unexpired token of `user` but `keep` from the issued to the
/// revoked ones, in one transaction of two statements however many there are;
/// returns them with their expiry.
async fn revoke_issued<DB>(
    pool: &sqlx::Pool<DB>,
    user: UserId,
    keep: Option<&str>,
) -> Result<Vec<(String, DateTime<Utc>)>, RevocationError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String, DateTime<Utc>): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    const OF_USER: &str =
        "FROM issued_tokens WHERE user_id = $1 AND jti <> $2 AND expires_at >= $3";
    let (keep, now) = (keep.unwrap_or_default().to_owned(), Utc::now());
    let mut tx = pool.begin().await.map_err(revocation_failed)?;
    sqlx::query(&format!(
        "INSERT INTO revoked_tokens (jti, expires_at) SELECT jti, expires_at {OF_USER}
         ON CONFLICT (jti) DO NOTHING"
    ))
    .bind(user)
    .bind(keep.clone())
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(revocation_failed)?;
    let revoked = sqlx::query_as(&format!("DELETE {OF_USER} RETURNING jti, expires_at"))
        .bind(user)
        .bind(keep)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(revocation_failed)?;
    tx.commit().await.map_err(revocation_failed)?;
    Ok(revoked)
}

/// The columns of a user, as `User` reads them: of `u`, or with the prefix
/// given (`""` in a `RETURNING` clause, where SQLite takes no alias).
macro_rules! user_columns {
    () => {
        $crate::backends::sql::user_columns!("u.")
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
/// before it. The candidates are locked (`$lock`, Postgres: `FOR UPDATE SKIP
/// LOCKED`) in a level of their own, since a window function may not stand
/// beside a lock.
macro_rules! page_ids {
    ($condition:expr, $limit:literal, $max_bytes:literal, $lock:literal) => {
        concat!(
            "SELECT id FROM (SELECT id, SUM(OCTET_LENGTH(encrypted_content)) OVER (ORDER BY id)
                                        - OCTET_LENGTH(encrypted_content) AS earlier
                             FROM (SELECT id, encrypted_content FROM messages WHERE ",
            $condition,
            " ORDER BY id LIMIT ",
            $limit,
            $lock,
            ") AS candidates) AS page WHERE earlier < ",
            $max_bytes
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

pub(crate) use {
    message_columns, page_ids, unclaimed, user_columns, user_json_fields, visible_contacts_where,
};

/// `%needle%` for `LIKE … ESCAPE '\'`, with the needle's own wildcards escaped.
pub fn like_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Appends `($1, $2, …)`, each id bound: the list of an `IN`.
pub fn push_id_list<'a, DB: sqlx::Database>(query: &mut sqlx::QueryBuilder<'a, DB>, ids: &'a [i64])
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    query.push("(");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
}

/// A mailbox row's counts (never negative in a consistent store).
pub fn usage(messages: i64, bytes: i64, from_strangers: i64) -> MailboxUsage {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    MailboxUsage {
        messages: count(messages),
        bytes: count(bytes),
        from_strangers: count(from_strangers),
    }
}

/// Which of `messages`, in order, fit their recipients' mailboxes (rows of
/// `(user, messages, bytes, from strangers)`; a recipient without one no
/// longer exists) under `quota`: for each, whether it is from a stranger (not
/// in `accepted`, rows of `(recipient, sender)`), or why it is refused.
pub fn admit(
    messages: &[NewMessage],
    mailboxes: &[(i64, i64, i64, i64)],
    accepted: &[(i64, i64)],
    quota: MailboxQuota,
) -> Vec<Result<bool, Admission>> {
    let mut usage: HashMap<UserId, MailboxUsage> = mailboxes
        .iter()
        .map(|&(user, m, b, s)| (user, usage(m, b, s)))
        .collect();
    let accepted: HashSet<(UserId, UserId)> = accepted.iter().copied().collect();
    messages
        .iter()
        .map(|m| {
            let from_stranger = !accepted.contains(&(m.recipient_id, m.sender_id));
            let bytes = m.content.len() as u64;
            let Some(mailbox) = usage.get_mut(&m.recipient_id) else {
                return Err(Admission::NoRecipient);
            };
            if !quota.admits(mailbox, bytes, from_stranger) {
                return Err(Admission::MailboxFull);
            }
            mailbox.add(bytes, from_stranger);
            Ok(from_stranger)
        })
        .collect()
}

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The `Store` methods, for use inside `impl Store for $store` where `$store`
/// has a `pool` field and its rows are `$row`; `$visible_contacts` is the one
/// query written per dialect (it aggregates to JSON). A macro rather than
/// generics because sqlx's executor bounds would outweigh the code they share.
macro_rules! store_methods {
    ($row:ty, $visible_contacts:expr, $lock_rows:expr, $skip_locked:literal $(,)?) => {
        fn ping(&self) -> $crate::store::Pending<'_, ()> {
            $crate::backends::sql::run(async move {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            })
        }

        fn create_user(
            &self,
            user: $crate::store::NewUser,
        ) -> $crate::store::Pending<'_, $crate::store::User> {
            $crate::backends::sql::run(async move {
                // A name retired with a deleted account counts as taken until then.
                let created = sqlx::query_as(
                    concat!(
                        "INSERT INTO users (username, username_key, username_skeleton, email, email_key,
                                                 password_hash, public_key, created_at, username_shape)
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
                         WHERE NOT EXISTS (SELECT 1 FROM retired_usernames
                                           WHERE username_skeleton IN ($3, $9) AND until > $8)
                         RETURNING ",
                        $crate::backends::sql::user_columns!("")
                    ),
                )
                .bind(&user.username)
                .bind(&user.username_key)
                .bind(&user.username_skeleton)
                .bind(&user.email)
                .bind(&user.email_key)
                .bind(&user.password_hash)
                .bind(&user.public_key)
                .bind(chrono::Utc::now())
                .bind(&user.username_shape)
                .fetch_optional(&self.pool)
                .await;
                match created {
                    Err(e) if $crate::backends::sql::is_unique_violation(&e) => {
                        Err($crate::store::StoreError::Duplicate)
                    }
                    Ok(None) => Err($crate::store::StoreError::Duplicate),
                    Ok(Some(user)) => Ok(user),
                    Err(other) => Err(other.into()),
                }
            })
        }

        fn credentials<'a>(
            &'a self,
            username_key: &'a str,
        ) -> $crate::store::Pending<'a, Option<$crate::store::Credentials>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(
                    "SELECT id, username, password_hash FROM users WHERE username_key = $1",
                )
                .bind(username_key)
                .fetch_optional(&self.pool)
                .await?)
            })
        }

        fn user_by_id(
            &self,
            id: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, Option<$crate::store::User>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::backends::sql::user_columns!(),
                    " FROM users u WHERE u.id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            })
        }

        fn user_by_username<'a>(
            &'a self,
            username_key: &'a str,
        ) -> $crate::store::Pending<'a, Option<$crate::store::User>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::backends::sql::user_columns!(),
                    " FROM users u WHERE u.username_key = $1"
                ))
                .bind(username_key)
                .fetch_optional(&self.pool)
                .await?)
            })
        }

        fn search_users<'a>(
            &'a self,
            needle: &'a str,
            exclude: $crate::domain::UserId,
            limit: i64,
        ) -> $crate::store::Pending<'a, Vec<$crate::store::User>> {
            $crate::backends::sql::run(async move {
                // Escaped, so that '%' and '_' in the needle are plain characters.
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::backends::sql::user_columns!(),
                    " FROM users u
                     WHERE u.username_key LIKE $1 ESCAPE '\\' AND u.id <> $2
                     ORDER BY u.username_key LIMIT $3"
                ))
                .bind($crate::backends::sql::like_pattern(needle))
                .bind(exclude)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            })
        }

        fn touch_last_seen(
            &self,
            id: $crate::domain::UserId,
            at: chrono::DateTime<chrono::Utc>,
        ) -> $crate::store::Pending<'_, ()> {
            $crate::backends::sql::run(async move {
                sqlx::query("UPDATE users SET last_seen = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            })
        }

        fn unkeyed_users(
            &self,
            after: $crate::domain::UserId,
            limit: i64,
        ) -> $crate::store::Pending<'_, Vec<($crate::domain::UserId, String)>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(
                    "SELECT id, username FROM users
                     WHERE (username_skeleton IS NULL OR username_shape IS NULL) AND id > $1
                     ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            })
        }

        fn set_username_keys<'a>(
            &'a self,
            id: $crate::domain::UserId,
            key: &'a str,
            skeleton: &'a str,
            shape: &'a str,
        ) -> $crate::store::Pending<'a, bool> {
            $crate::backends::sql::run(async move {
                let set = sqlx::query(
                    "UPDATE users SET username_key = $1, username_skeleton = $2, username_shape = $4
                     WHERE id = $3",
                )
                .bind(key)
                .bind(skeleton)
                .bind(id)
                .bind(shape)
                .execute(&self.pool)
                .await;
                match set {
                    Err(e) if $crate::backends::sql::is_unique_violation(&e) => Ok(false),
                    other => Ok(other?.rows_affected() > 0),
                }
            })
        }

        fn set_password_hash<'a>(
            &'a self,
            id: $crate::domain::UserId,
            hash: &'a str,
        ) -> $crate::store::Pending<'a, ()> {
            $crate::backends::sql::run(async move {
                sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                    .bind(hash)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            })
        }

        fn set_public_key<'a>(
            &'a self,
            id: $crate::domain::UserId,
            public_key: &'a str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> $crate::store::Pending<'a, Option<$crate::store::User>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(concat!(
                    "UPDATE users SET public_key = $1, key_changed_at = $2 WHERE id = $3 RETURNING ",
                    $crate::backends::sql::user_columns!("")
                ))
                .bind(public_key)
                .bind(at)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            })
        }

        fn delete_user(
            &self,
            id: $crate::domain::UserId,
            name_retired_until: chrono::DateTime<chrono::Utc>,
        ) -> $crate::store::Pending<'_, Option<Vec<$crate::domain::UserId>>> {
            $crate::backends::sql::run(async move {
                // Written first, so that the transaction holds the write lock from the start.
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO retired_usernames (username_skeleton, until)
                     SELECT username_skeleton, $2 FROM users WHERE id = $1 AND username_skeleton IS NOT NULL
                     UNION SELECT username_shape, $2 FROM users WHERE id = $1 AND username_shape IS NOT NULL
                     ON CONFLICT (username_skeleton) DO UPDATE SET until = EXCLUDED.until",
                )
                .bind(id)
                .bind(name_retired_until)
                .execute(&mut *tx)
                .await?;
                let related: Vec<$crate::domain::UserId> = sqlx::query_scalar(
                    "SELECT friend_id FROM contacts WHERE user_id = $1
                     UNION SELECT user_id FROM contacts WHERE friend_id = $1",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                // Contacts, requests, messages and the mailbox go with the user (ON DELETE CASCADE).
                let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if deleted.rows_affected() == 0 {
                    return Ok(None);
                }
                tx.commit().await?;
                Ok(Some(related))
            })
        }

        fn add_contact(
            &self,
            owner: $crate::domain::UserId,
            other: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, $crate::store::Contact> {
            $crate::backends::sql::run(async move {
                use sqlx::Row as _;
                let now = chrono::Utc::now();
                // The first statement writes, so the transaction takes the write lock at once
                // and cannot deadlock upgrading a read lock.
                let mut tx = self.pool.begin().await?;
                let accepted = sqlx::query(
                    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'accepted', $3)
                     ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'
                     WHERE contacts.status = 'pending'
                     RETURNING created_at",
                )
                .bind(owner)
                .bind(other)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = accepted else {
                    return Err($crate::store::StoreError::AlreadyContact);
                };
                let created_at: chrono::DateTime<chrono::Utc> = row.try_get("created_at")?;
                sqlx::query(
                    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'pending', $3)
                     ON CONFLICT (user_id, friend_id) DO NOTHING",
                )
                .bind(other)
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok($crate::store::Contact {
                    other: $crate::backends::sql::existing(self.user_by_id(other).await?)?,
                    status: $crate::store::ContactStatus::Accepted,
                    created_at,
                })
            })
        }

        fn contacts(
            &self,
            owner: $crate::domain::UserId,
            skip: i64,
            limit: i64,
        ) -> $crate::store::Pending<'_, Vec<$crate::store::Contact>> {
            $crate::backends::sql::run(async move {
                let rows: Vec<$row> = sqlx::query(concat!(
                    "SELECT ",
                    $crate::backends::sql::user_columns!(),
                    ", c.status, c.created_at AS contact_created_at
                     FROM contacts c JOIN users u ON u.id = c.friend_id
                     WHERE c.user_id = $1 AND c.status = 'accepted'
                     ORDER BY u.username_key LIMIT $2 OFFSET $3"
                ))
                .bind(owner)
                .bind(limit)
                .bind(skip)
                .fetch_all(&self.pool)
                .await?;
                $crate::backends::sql::contacts_from_rows(&rows)
            })
        }

        fn pending_requests(
            &self,
            owner: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, Vec<$crate::store::Contact>> {
            $crate::backends::sql::run(async move {
                let rows: Vec<$row> = sqlx::query(concat!(
                    "SELECT ",
                    $crate::backends::sql::user_columns!(),
                    ", c.status, c.created_at AS contact_created_at
                     FROM contacts c JOIN users u ON u.id = c.friend_id
                     WHERE c.user_id = $1 AND c.status = 'pending'
                     ORDER BY c.created_at, u.id"
                ))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
                $crate::backends::sql::contacts_from_rows(&rows)
            })
        }

        fn accept_request(
            &self,
            owner: $crate::domain::UserId,
            requester: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, Option<$crate::store::Contact>> {
            $crate::backends::sql::run(async move {
                use sqlx::Row as _;
                let mut tx = self.pool.begin().await?;
                let accepted = sqlx::query(
                    "UPDATE contacts SET status = 'accepted'
                     WHERE user_id = $1 AND friend_id = $2 AND status = 'pending'
                     RETURNING created_at",
                )
                .bind(owner)
                .bind(requester)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = accepted else {
                    return Ok(None);
                };
                let created_at: chrono::DateTime<chrono::Utc> = row.try_get("created_at")?;
                sqlx::query(
                    "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES ($1, $2, 'accepted', $3)
                     ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'",
                )
                .bind(requester)
                .bind(owner)
                .bind(chrono::Utc::now())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some($crate::store::Contact {
                    other: $crate::backends::sql::existing(self.user_by_id(requester).await?)?,
                    status: $crate::store::ContactStatus::Accepted,
                    created_at,
                }))
            })
        }

        fn remove_contact(
            &self,
            owner: $crate::domain::UserId,
            other: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, bool> {
            $crate::backends::sql::run(async move {
                let done = sqlx::query(
                    "DELETE FROM contacts
                     WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
                )
                .bind(owner)
                .bind(other)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            })
        }

        fn visible_contacts(
            &self,
            viewer: $crate::domain::UserId,
            visibility: $crate::config::Visibility,
        ) -> $crate::store::Pending<'_, Vec<$crate::store::User>> {
            $crate::backends::sql::run(async move {
                // One row holding a JSON array: a contact list can be long, and
                // rows cost more to hand over one by one than to decode at once.
                let list: String = sqlx::query_scalar($visible_contacts)
                    .bind(viewer)
                    .bind(visibility == $crate::config::Visibility::Open)
                    .fetch_one(&self.pool)
                    .await?;
                let mut users: Vec<$crate::store::User> = serde_json::from_str(&list)
                    .map_err(|e| $crate::store::StoreError::Other(e.into()))?;
                users.sort_by_cached_key(|u| u.username.to_lowercase());
                Ok(users)
            })
        }

        fn visible_user<'a>(
            &'a self,
            viewer: $crate::domain::UserId,
            username_key: &'a str,
            visibility: $crate::config::Visibility,
        ) -> $crate::store::Pending<'a, Option<$crate::store::User>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::backends::sql::user_columns!(),
                    " FROM users u
                     WHERE u.username_key = $1
                       AND ($2 OR u.id = $3 OR EXISTS (SELECT 1 FROM contacts r
                                                     WHERE r.user_id = u.id AND r.friend_id = $3
                                                       AND r.status = 'accepted'))"
                ))
                .bind(username_key)
                .bind(visibility == $crate::config::Visibility::Open)
                .bind(viewer)
                .fetch_optional(&self.pool)
                .await?)
            })
        }

        fn watchers(
            &self,
            subject: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, Vec<$crate::domain::UserId>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_scalar(
                    "SELECT user_id FROM contacts WHERE friend_id = $1 AND status = 'accepted'",
                )
                .bind(subject)
                .fetch_all(&self.pool)
                .await?)
            })
        }

        fn consented(
            &self,
            subject: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, Vec<$crate::domain::UserId>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_scalar(
                    "SELECT friend_id FROM contacts WHERE user_id = $1 AND status = 'accepted'",
                )
                .bind(subject)
                .fetch_all(&self.pool)
                .await?)
            })
        }

        fn consenting<'a>(
            &'a self,
            viewer: $crate::domain::UserId,
            subjects: &'a [$crate::domain::UserId],
        ) -> $crate::store::Pending<'a, Vec<$crate::domain::UserId>> {
            $crate::backends::sql::run(async move {
                if subjects.is_empty() {
                    return Ok(Vec::new());
                }
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT user_id FROM contacts WHERE status = 'accepted' AND friend_id = ",
                );
                select.push_bind(viewer);
                select.push(" AND user_id IN ");
                $crate::backends::sql::push_id_list(&mut select, subjects);
                Ok(select.build_query_scalar().fetch_all(&self.pool).await?)
            })
        }

        fn store_messages<'a>(
            &'a self,
            messages: &'a [$crate::store::NewMessage],
            quota: $crate::store::MailboxQuota,
        ) -> $crate::store::Pending<'a, Vec<$crate::store::Admission>> {
            $crate::backends::sql::run(async move {
                if messages.is_empty() {
                    return Ok(Vec::new());
                }
                let ids = |of: fn(&$crate::store::NewMessage) -> i64| {
                    let mut ids: Vec<i64> = messages.iter().map(of).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                };
                let (recipients, senders) = (ids(|m| m.recipient_id), ids(|m| m.sender_id));
                let mut tx = self.pool.begin().await?;
                // Every recipient's mailbox row exists, so that it can be locked:
                // concurrent batches for one mailbox take turns. A recipient
                // deleted meanwhile has none, and gets nothing.
                let mut ensure =
                    sqlx::QueryBuilder::new("INSERT INTO mailboxes (user_id) SELECT id FROM users WHERE id IN ");
                $crate::backends::sql::push_id_list(&mut ensure, &recipients);
                ensure.push(" ON CONFLICT (user_id) DO NOTHING");
                ensure.build().execute(&mut *tx).await?;
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT user_id, messages, bytes, from_strangers FROM mailboxes WHERE user_id IN ",
                );
                $crate::backends::sql::push_id_list(&mut select, &recipients);
                select.push(" ORDER BY user_id");
                select.push($lock_rows);
                let usage: Vec<(i64, i64, i64, i64)> =
                    select.build_query_as().fetch_all(&mut *tx).await?;
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT user_id, friend_id FROM contacts WHERE status = 'accepted' AND user_id IN ",
                );
                $crate::backends::sql::push_id_list(&mut select, &recipients);
                select.push(" AND friend_id IN ");
                $crate::backends::sql::push_id_list(&mut select, &senders);
                let accepted: Vec<(i64, i64)> = select.build_query_as().fetch_all(&mut *tx).await?;
                let verdicts = $crate::backends::sql::admit(messages, &usage, &accepted, quota);
                let admitted: Vec<(&$crate::store::NewMessage, bool)> = messages
                    .iter()
                    .zip(&verdicts)
                    .filter_map(|(m, v)| v.as_ref().ok().map(|stranger| (m, *stranger)))
                    .collect();
                let mut stored = Vec::with_capacity(admitted.len());
                // SQLite binds at most 32766 parameters per statement; eight per message.
                for chunk in admitted.chunks(4000) {
                    let mut insert = sqlx::QueryBuilder::new(
                        "INSERT INTO messages (id, sender_id, receiver_id, encrypted_content, sent_at, \
                         from_stranger, receipt, claimed_until) ",
                    );
                    insert.push_values(chunk, |mut row, (m, stranger)| {
                        row.push_bind(m.id)
                            .push_bind(m.sender_id)
                            .push_bind(m.recipient_id)
                            .push_bind(&m.content)
                            .push_bind(m.sent_at)
                            .push_bind(*stranger)
                            .push_bind(m.receipt)
                            .push_bind(m.claimed_until);
                    });
                    // Stored already (by another of the recipient's
                    // connections, or a retry): kept as it is.
                    insert.push(" ON CONFLICT (id) DO NOTHING");
                    insert.push(concat!(" RETURNING ", $crate::backends::sql::message_columns!()));
                    let rows: Vec<$crate::store::Message> =
                        insert.build_query_as().fetch_all(&mut *tx).await?;
                    stored.extend(rows);
                }
                tx.commit().await?;
                let mut stored: std::collections::HashMap<i64, $crate::store::Message> =
                    stored.into_iter().map(|m| (m.id, m)).collect();
                Ok(messages
                    .iter()
                    .zip(verdicts)
                    .map(|(m, v)| match v {
                        Ok(_) => $crate::store::Admission::Stored(stored.remove(&m.id).unwrap_or_else(
                            || $crate::store::Message {
                                id: m.id,
                                sender_id: m.sender_id,
                                recipient_id: m.recipient_id,
                                content: m.content.clone(),
                                sent_at: m.sent_at,
                            },
                        )),
                        Err(refused) => refused,
                    })
                    .collect())
            })
        }

        fn mailbox_usage(
            &self,
            user: $crate::domain::UserId,
        ) -> $crate::store::Pending<'_, $crate::store::MailboxUsage> {
            $crate::backends::sql::run(async move {
                let row: Option<(i64, i64, i64)> = sqlx::query_as(
                    "SELECT messages, bytes, from_strangers FROM mailboxes WHERE user_id = $1",
                )
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map_or_else(Default::default, |(messages, bytes, from_strangers)| {
                    $crate::backends::sql::usage(messages, bytes, from_strangers)
                }))
            })
        }

        fn peek_unread(
            &self,
            recipient: $crate::domain::UserId,
            page: $crate::store::Page,
        ) -> $crate::store::Pending<'_, Vec<$crate::store::Message>> {
            $crate::backends::sql::run(async move {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::backends::sql::message_columns!(),
                    " FROM messages WHERE id IN (",
                    $crate::backends::sql::page_ids!(
                        concat!(
                            "receiver_id = $1 AND read_at IS NULL AND id > $4 AND ",
                            $crate::backends::sql::unclaimed!("messages", "$3")
                        ),
                        "$2",
                        "$5",
                        ""
                    ),
                    ") ORDER BY id"
                ))
                .bind(recipient)
                .bind($crate::store::INBOX_PAGE)
                .bind(chrono::Utc::now())
                .bind(page.after)
                .bind(page.max_bytes_sql())
                .fetch_all(&self.pool)
                .await?)
            })
        }

        fn claim_unread(
            &self,
            recipient: $crate::domain::UserId,
            lease: std::time::Duration,
            take_over: bool,
            page: $crate::store::Page,
        ) -> $crate::store::Pending<'_, Vec<$crate::store::InboxMessage>> {
            $crate::backends::sql::run(async move {
                let now = chrono::Utc::now();
                let until = $crate::domain::time::after(now, lease);
                // Rows another claim or take holds are passed by (Postgres:
                // SKIP LOCKED), and the outer condition is checked again on
                // the rows taken, so no message is claimed twice.
                let mut claimed: Vec<$crate::store::InboxMessage> = sqlx::query_as(concat!(
                    "UPDATE messages SET claimed_until = $2 WHERE id IN (",
                    $crate::backends::sql::page_ids!(
                        concat!(
                            "receiver_id = $1 AND read_at IS NULL AND id > $6 AND ($5 OR ",
                            $crate::backends::sql::unclaimed!("messages", "$3"),
                            ")"
                        ),
                        "$4",
                        "$7",
                        $skip_locked
                    ),
                    ") AND read_at IS NULL AND ($5 OR ",
                    $crate::backends::sql::unclaimed!("messages", "$3"),
                    ") RETURNING ",
                    $crate::backends::sql::message_columns!(),
                    ",
                                (SELECT username FROM users u WHERE u.id = messages.sender_id)
                                    AS sender_username"
                ))
                .bind(recipient)
                .bind(until)
                .bind(now)
                .bind($crate::store::INBOX_PAGE)
                .bind(take_over)
                .bind(page.after)
                .bind(page.max_bytes_sql())
                .fetch_all(&self.pool)
                .await?;
                claimed.sort_by_key(|m| m.message.id);
                Ok(claimed)
            })
        }

        fn release_claims<'a>(
            &'a self,
            recipient: $crate::domain::UserId,
            ids: &'a [i64],
        ) -> $crate::store::Pending<'a, ()> {
            $crate::backends::sql::run(async move {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut release = sqlx::QueryBuilder::new(
                    "UPDATE messages SET claimed_until = NULL WHERE receiver_id = ",
                );
                release.push_bind(recipient);
                release.push(" AND id IN ");
                $crate::backends::sql::push_id_list(&mut release, ids);
                release.build().execute(&self.pool).await?;
                Ok(())
            })
        }

        fn renew_claims<'a>(
            &'a self,
            recipient: $crate::domain::UserId,
            ids: &'a [i64],
            until: chrono::DateTime<chrono::Utc>,
        ) -> $crate::store::Pending<'a, ()> {
            $crate::backends::sql::run(async move {
                if ids.is_empty() {
                    return Ok(());
                }
                let mut renew = sqlx::QueryBuilder::new("UPDATE messages SET claimed_until = ");
                renew.push_bind(until);
                renew.push(" WHERE receiver_id = ");
                renew.push_bind(recipient);
                renew.push(" AND id IN ");
                $crate::backends::sql::push_id_list(&mut renew, ids);
                renew.build().execute(&self.pool).await?;
                Ok(())
            })
        }

        fn delete_read<'a>(
            &'a self,
            reads: &'a [($crate::domain::UserId, i64)],
        ) -> $crate::store::Pending<'a, Vec<$crate::store::Acked>> {
            $crate::backends::sql::run(async move {
                let mut acked = Vec::new();
                // SQLite binds at most 32766 parameters per statement; three per id.
                for chunk in reads.chunks(8000) {
                    // Found by id (the primary key), kept only if the recipient's.
                    let mut delete = sqlx::QueryBuilder::new("DELETE FROM messages WHERE id IN (");
                    let mut ids = delete.separated(", ");
                    for (_, id) in chunk {
                        ids.push_bind(*id);
                    }
                    delete.push(") AND (receiver_id, id) IN (VALUES ");
                    let mut pairs = delete.separated(", ");
                    for (recipient, id) in chunk {
                        pairs.push("(");
                        pairs.push_bind_unseparated(*recipient);
                        pairs.push_unseparated(", ");
                        pairs.push_bind_unseparated(*id);
                        pairs.push_unseparated(")");
                    }
                    delete.push(") RETURNING id, receiver_id, sender_id, receipt");
                    acked.extend(
                        delete
                            .build_query_as::<$crate::store::Acked>()
                            .fetch_all(&self.pool)
                            .await?,
                    );
                }
                Ok(acked)
            })
        }

        fn expire_messages(
            &self,
            sent_before: chrono::DateTime<chrono::Utc>,
            limit: i64,
        ) -> $crate::store::Pending<'_, u64> {
            $crate::backends::sql::run(async move {
                let expired = sqlx::query(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE sent_at < $1
                                                       ORDER BY sent_at LIMIT $2)",
                )
                .bind(sent_before)
                .bind(limit)
                .execute(&self.pool)
                .await?;
                Ok(expired.rows_affected())
            })
        }

        fn take_unread(
            &self,
            recipient: $crate::domain::UserId,
            page: $crate::store::Page,
        ) -> $crate::store::Pending<'_, Vec<$crate::store::Message>> {
            $crate::backends::sql::run(async move {
                // One statement. SQLite runs writers one at a time; in Postgres a
                // concurrent take or claim passes by the rows another one locked
                // (SKIP LOCKED: none waits on another, so none deadlocks).
                // Either way no message is handed out twice, and none stays
                // stored once handed out.
                // Claimed messages are being pushed: passed by, here too (the
                // outer condition is checked again on a row claimed meanwhile).
                let mut taken: Vec<$crate::store::Message> = sqlx::query_as(concat!(
                    "DELETE FROM messages WHERE id IN (",
                    $crate::backends::sql::page_ids!(
                        concat!(
                            "receiver_id = $1 AND read_at IS NULL AND id > $4 AND ",
                            $crate::backends::sql::unclaimed!("messages", "$3")
                        ),
                        "$2",
                        "$5",
                        $skip_locked
                    ),
                    ") AND ",
                    $crate::backends::sql::unclaimed!("messages", "$3"),
                    " RETURNING ",
                    $crate::backends::sql::message_columns!()
                ))
                .bind(recipient)
                .bind($crate::store::INBOX_PAGE)
                .bind(chrono::Utc::now())
                .bind(page.after)
                .bind(page.max_bytes_sql())
                .fetch_all(&self.pool)
                .await?;
                taken.sort_by_key(|m| m.id);
                Ok(taken)
            })
        }
    };
}

pub(crate) use store_methods;

/// A user a contact row just written refers to; missing if its account was
/// deleted meanwhile.
pub fn existing(user: Option<User>) -> StoreResult<User> {
    user.ok_or(StoreError::NoSuchUser)
}

/// Contact rows (a user's columns, `status`, `contact_created_at`) as contacts.
pub fn contacts_from_rows<R>(rows: &[R]) -> StoreResult<Vec<Contact>>
where
    R: sqlx::Row,
    User: for<'r> sqlx::FromRow<'r, R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let contact = |row: &R| -> Result<Contact, sqlx::Error> {
        let status: String = row.try_get("status")?;
        Ok(Contact {
            other: User::from_row(row)?,
            status: if status == "accepted" {
                ContactStatus::Accepted
            } else {
                ContactStatus::Pending
            },
            created_at: row.try_get("contact_created_at")?,
        })
    };
    Ok(rows.iter().map(contact).collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(super::like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
