//! The SQL backends: SQLite (the embedded default) and Postgres (shared by
//! replicas), each with its own `impl Store` in its file; both run the SQL
//! of [`queries`], written once, and share the helpers here.

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
        Admission, Contact, ContactStatus, MailboxQuota, MailboxUsage, Message, NewMessage,
        StoreError, StoreResult, User,
    },
};

pub mod pgpool;
pub mod postgres;
pub mod queries;
pub mod refresh;
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
            // The database, not the request: shut down or starting up, out of
            // connections, or a connection lost (also as a pooler reports it).
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(unavailable_state) => {
                Self::Unavailable(sqlx::Error::Database(db).into())
            }
            other => Self::Other(other.into()),
        }
    }
}

/// SQLSTATEs that say the database is unavailable: class 08 (connection
/// exception), 53300 (too many connections), 57P01–57P03 (shut down by an
/// operator or a crash, or not accepting connections yet).
fn unavailable_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
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
/// revoked ones, in two statements however many there are, on `tx` (a
/// connection inside a transaction, which the caller commits); returns them
/// with their expiry.
async fn revoke_issued<C, DB>(
    tx: &mut C,
    user: UserId,
    keep: Option<&str>,
) -> Result<Vec<(String, DateTime<Utc>)>, RevocationError>
where
    DB: sqlx::Database,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String, DateTime<Utc>): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    const OF_USER: &str =
        "FROM issued_tokens WHERE user_id = $1 AND jti <> $2 AND expires_at >= $3";
    let (keep, now) = (keep.unwrap_or_default().to_owned(), Utc::now());
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
    sqlx::query_as(&format!("DELETE {OF_USER} RETURNING jti, expires_at"))
        .bind(user)
        .bind(keep)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(revocation_failed)
}

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

/// The distinct values `of` takes over `messages`, in order.
pub fn distinct(messages: &[NewMessage], of: fn(&NewMessage) -> i64) -> Vec<i64> {
    let mut ids: Vec<i64> = messages.iter().map(of).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What became of each of `messages`: refused as `verdicts` say, or stored
/// (as the rows the insert returned; a message stored already, which the
/// insert passed by, as it was given).
pub fn admissions(
    messages: &[NewMessage],
    verdicts: Vec<Result<bool, Admission>>,
    stored: Vec<Message>,
) -> Vec<Admission> {
    let mut stored: HashMap<i64, Message> = stored.into_iter().map(|m| (m.id, m)).collect();
    messages
        .iter()
        .zip(verdicts)
        .map(|(m, v)| match v {
            Ok(_) => Admission::Stored(stored.remove(&m.id).unwrap_or_else(|| Message {
                id: m.id,
                sender_id: m.sender_id,
                recipient_id: m.recipient_id,
                content: m.content.clone(),
                sent_at: m.sent_at,
            })),
            Err(refused) => refused,
        })
        .collect()
}

/// Users from one JSON array (the aggregating queries' answer), by name
/// regardless of case.
pub fn users_from_json(list: &str) -> StoreResult<Vec<User>> {
    let mut users: Vec<User> =
        serde_json::from_str(list).map_err(|e| StoreError::Other(e.into()))?;
    users.sort_by_cached_key(|u| u.username.to_lowercase());
    Ok(users)
}

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

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
