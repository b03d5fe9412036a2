//! The embedded default: one SQLite file, nothing to install.

use std::{
    collections::HashMap,
    os::unix::fs::OpenOptionsExt,
    str::FromStr,
    sync::{
        RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    SqlitePool,
    sqlite::SqliteRow,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::queries;
use crate::{
    config::Visibility,
    domain::UserId,
    revocation::{RevocationError, Revocations},
    store::{
        Acked, Admission, Contact, ContactStatus, Credentials, INBOX_PAGE, InboxMessage,
        MailboxQuota, MailboxUsage, Message, NewMessage, NewUser, Page, Pending, Store, StoreError,
        User,
    },
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Message ids reserved at once: one write per this many messages.
const ID_BLOCK: i64 = 4096;

pub struct SqliteStore {
    pool: SqlitePool,
    /// The next message id to give: ids below `reserved_until` are this
    /// process's, and reservations follow one another without a gap (one
    /// process owns the file), so taking one is a single atomic add.
    next_id: AtomicI64,
    reserved_until: AtomicI64,
    /// Held while a new block is reserved.
    reserving: tokio::sync::Mutex<()>,
    /// Revoked token ids and when they expire.
    revoked: RwLock<HashMap<String, DateTime<Utc>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| "DATABASE_URL is not a valid sqlite:// URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("opening the SQLite database")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("applying SQLite migrations")?;
        let revoked = sqlx::query_as::<_, (String, DateTime<Utc>)>(
            "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at >= $1",
        )
        .bind(Utc::now())
        .fetch_all(&pool)
        .await
        .context("loading revoked tokens")?;
        let end = reserve_ids(&pool).await.context("reserving message ids")?;
        Ok(Self {
            next_id: AtomicI64::new(end - ID_BLOCK + 1),
            reserved_until: AtomicI64::new(end + 1),
            pool,
            reserving: tokio::sync::Mutex::new(()),
            revoked: RwLock::new(revoked.into_iter().collect()),
        })
    }

    /// A transaction holding the write lock from its start (`BEGIN
    /// IMMEDIATE`): every transaction here writes, and one that began
    /// deferred and read first could not take the lock when another writer
    /// had committed meanwhile (SQLite answers "database is locked" at once
    /// then, whatever the busy timeout); this one waits its turn instead.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

/// What a backup holds, to be told to whoever took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    pub bytes: u64,
    pub users: i64,
    pub messages: i64,
}

/// Copies the live database at `url` into the new file `to` while servers
/// keep writing to it: `VACUUM INTO` reads in one transaction, so the copy
/// is a consistent snapshot (of the last commit before it began), compacted,
/// and a SQLite database of its own that a server can start on as it is.
/// An existing `to` is never overwritten; a failed copy leaves nothing.
pub async fn backup(url: &str, to: &std::path::Path) -> anyhow::Result<BackupSummary> {
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| "DATABASE_URL is not a valid sqlite:// URL")?
        .read_only(true)
        .busy_timeout(Duration::from_secs(30));
    let from = options.get_filename().to_owned();
    if !from.is_file() {
        anyhow::bail!("there is no database at {}", from.display());
    }
    // Claimed first, empty (which VACUUM INTO accepts), readable by the owner
    // alone (it holds password hashes): nothing else can be there, or come
    // there meanwhile, to be overwritten or removed below.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
    {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} exists already: a backup never overwrites a file",
            to.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("creating {}", to.display())),
    }
    let Some(target) = to.to_str().map(str::to_owned) else {
        let _ = std::fs::remove_file(to);
        anyhow::bail!("the backup's path must be UTF-8");
    };
    let copied = async {
        let db = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", from.display()))?;
        let migrated: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&db)
        .await?;
        anyhow::ensure!(
            migrated == 1,
            "{} is not a secchat database",
            from.display()
        );
        sqlx::query("VACUUM INTO $1")
            .bind(&target)
            .execute(&db)
            .await?;
        db.close().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(err) = copied {
        let _ = std::fs::remove_file(to);
        return Err(err.context(format!("copying {} into {}", from.display(), to.display())));
    }
    // Durable before it is reported: the copy is written without syncing.
    std::fs::File::open(to)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", to.display()))?;
    let copy = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(to).read_only(true))
        .await?;
    let counts: (i64, i64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM messages)")
            .fetch_one(&copy)
            .await?;
    copy.close().await;
    Ok(BackupSummary {
        bytes: std::fs::metadata(to)?.len(),
        users: counts.0,
        messages: counts.1,
    })
}

/// Reserves the next [`ID_BLOCK`] message ids in `sqlite_sequence`; returns
/// the last of them.
async fn reserve_ids(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sqlite_sequence SET seq = seq + $1 WHERE name = 'messages' RETURNING seq",
    )
    .bind(ID_BLOCK)
    .fetch_one(pool)
    .await
}

impl Store for SqliteStore {
    fn ping(&self) -> Pending<'_, ()> {
        super::run(async move {
            sqlx::query(queries::PING).execute(&self.pool).await?;
            Ok(())
        })
    }

    fn create_user(&self, user: NewUser) -> Pending<'_, User> {
        super::run(async move {
            // A name retired with a deleted account counts as taken until then.
            let created = sqlx::query_as(queries::CREATE_USER)
                .bind(&user.username)
                .bind(&user.username_key)
                .bind(&user.username_skeleton)
                .bind(&user.email)
                .bind(&user.email_key)
                .bind(&user.password_hash)
                .bind(&user.public_key)
                .bind(Utc::now())
                .bind(&user.username_shape)
                .fetch_optional(&self.pool)
                .await;
            match created {
                Err(e) if super::is_unique_violation(&e) => Err(StoreError::Duplicate),
                Ok(None) => Err(StoreError::Duplicate),
                Ok(Some(user)) => Ok(user),
                Err(other) => Err(other.into()),
            }
        })
    }

    fn credentials<'a>(&'a self, username_key: &'a str) -> Pending<'a, Option<Credentials>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::CREDENTIALS)
                .bind(username_key)
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn user_by_id(&self, id: UserId) -> Pending<'_, Option<User>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::USER_BY_ID)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn user_by_username<'a>(&'a self, username_key: &'a str) -> Pending<'a, Option<User>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::USER_BY_USERNAME)
                .bind(username_key)
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn search_users<'a>(
        &'a self,
        needle: &'a str,
        exclude: UserId,
        limit: i64,
    ) -> Pending<'a, Vec<User>> {
        super::run(async move {
            // Escaped, so that '%' and '_' in the needle are plain characters.
            Ok(sqlx::query_as(queries::SEARCH_USERS)
                .bind(super::like_pattern(needle))
                .bind(exclude)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
        })
    }

    fn touch_last_seen(&self, id: UserId, at: DateTime<Utc>) -> Pending<'_, ()> {
        super::run(async move {
            sqlx::query(queries::TOUCH_LAST_SEEN)
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn unkeyed_users(&self, after: UserId, limit: i64) -> Pending<'_, Vec<(UserId, String)>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::UNKEYED_USERS)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
        })
    }

    fn set_username_keys<'a>(
        &'a self,
        id: UserId,
        key: &'a str,
        skeleton: &'a str,
        shape: &'a str,
    ) -> Pending<'a, bool> {
        super::run(async move {
            let set = sqlx::query(queries::SET_USERNAME_KEYS)
                .bind(key)
                .bind(skeleton)
                .bind(id)
                .bind(shape)
                .execute(&self.pool)
                .await;
            match set {
                Err(e) if super::is_unique_violation(&e) => Ok(false),
                other => Ok(other?.rows_affected() > 0),
            }
        })
    }

    fn set_password_hash<'a>(&'a self, id: UserId, hash: &'a str) -> Pending<'a, ()> {
        super::run(async move {
            sqlx::query(queries::SET_PASSWORD_HASH)
                .bind(hash)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn set_public_key<'a>(
        &'a self,
        id: UserId,
        public_key: &'a str,
        at: DateTime<Utc>,
    ) -> Pending<'a, Option<User>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::SET_PUBLIC_KEY)
                .bind(public_key)
                .bind(at)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn delete_user(
        &self,
        id: UserId,
        name_retired_until: DateTime<Utc>,
    ) -> Pending<'_, Option<Vec<UserId>>> {
        super::run(async move {
            // Written first, so that the transaction holds the write lock from the start.
            let mut tx = self.begin_write().await?;
            sqlx::query(queries::RETIRE_USERNAMES)
                .bind(id)
                .bind(name_retired_until)
                .execute(&mut *tx)
                .await?;
            let related: Vec<UserId> = sqlx::query_scalar(queries::RELATED_USERS)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            // Contacts, requests, messages and the mailbox go with the user (ON DELETE CASCADE).
            let deleted = sqlx::query(queries::DELETE_USER)
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

    fn add_contact(&self, owner: UserId, other: UserId) -> Pending<'_, Contact> {
        super::run(async move {
            use sqlx::Row as _;
            let now = Utc::now();
            // The first statement writes, so the transaction takes the write lock at once
            // and cannot deadlock upgrading a read lock.
            let mut tx = self.begin_write().await?;
            let accepted = sqlx::query(queries::ADD_CONTACT)
                .bind(owner)
                .bind(other)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = accepted else {
                return Err(StoreError::AlreadyContact);
            };
            let created_at: DateTime<Utc> = row.try_get("created_at")?;
            sqlx::query(queries::REQUEST_CONTACT)
                .bind(other)
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Contact {
                other: super::existing(self.user_by_id(other).await?)?,
                status: ContactStatus::Accepted,
                created_at,
            })
        })
    }

    fn contacts(&self, owner: UserId, skip: i64, limit: i64) -> Pending<'_, Vec<Contact>> {
        super::run(async move {
            let rows: Vec<SqliteRow> = sqlx::query(queries::CONTACTS)
                .bind(owner)
                .bind(limit)
                .bind(skip)
                .fetch_all(&self.pool)
                .await?;
            super::contacts_from_rows(&rows)
        })
    }

    fn pending_requests(&self, owner: UserId) -> Pending<'_, Vec<Contact>> {
        super::run(async move {
            let rows: Vec<SqliteRow> = sqlx::query(queries::PENDING_REQUESTS)
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
            super::contacts_from_rows(&rows)
        })
    }

    fn accept_request(&self, owner: UserId, requester: UserId) -> Pending<'_, Option<Contact>> {
        super::run(async move {
            use sqlx::Row as _;
            let mut tx = self.begin_write().await?;
            let accepted = sqlx::query(queries::ACCEPT_REQUEST)
                .bind(owner)
                .bind(requester)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = accepted else {
                return Ok(None);
            };
            let created_at: DateTime<Utc> = row.try_get("created_at")?;
            sqlx::query(queries::ACCEPT_BACK)
                .bind(requester)
                .bind(owner)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(Contact {
                other: super::existing(self.user_by_id(requester).await?)?,
                status: ContactStatus::Accepted,
                created_at,
            }))
        })
    }

    fn remove_contact(&self, owner: UserId, other: UserId) -> Pending<'_, bool> {
        super::run(async move {
            let done = sqlx::query(queries::REMOVE_CONTACT)
                .bind(owner)
                .bind(other)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn visible_contacts(&self, viewer: UserId, visibility: Visibility) -> Pending<'_, Vec<User>> {
        super::run(async move {
            // One row holding a JSON array: a contact list can be long, and
            // rows cost more to hand over one by one than to decode at once.
            let list: String = sqlx::query_scalar(queries::VISIBLE_CONTACTS_SQLITE)
                .bind(viewer)
                .bind(visibility == Visibility::Open)
                .fetch_one(&self.pool)
                .await?;
            super::users_from_json(&list)
        })
    }

    fn visible_user<'a>(
        &'a self,
        viewer: UserId,
        username_key: &'a str,
        visibility: Visibility,
    ) -> Pending<'a, Option<User>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::VISIBLE_USER)
                .bind(username_key)
                .bind(visibility == Visibility::Open)
                .bind(viewer)
                .fetch_optional(&self.pool)
                .await?)
        })
    }

    fn watchers(&self, subject: UserId) -> Pending<'_, Vec<UserId>> {
        super::run(async move {
            Ok(sqlx::query_scalar(queries::WATCHERS)
                .bind(subject)
                .fetch_all(&self.pool)
                .await?)
        })
    }

    fn consented(&self, subject: UserId) -> Pending<'_, Vec<UserId>> {
        super::run(async move {
            Ok(sqlx::query_scalar(queries::CONSENTED)
                .bind(subject)
                .fetch_all(&self.pool)
                .await?)
        })
    }

    fn consenting<'a>(
        &'a self,
        viewer: UserId,
        subjects: &'a [UserId],
    ) -> Pending<'a, Vec<UserId>> {
        super::run(async move {
            if subjects.is_empty() {
                return Ok(Vec::new());
            }
            let mut select = sqlx::QueryBuilder::new(queries::CONSENTING);
            select.push_bind(viewer);
            select.push(" AND user_id IN ");
            super::push_id_list(&mut select, subjects);
            Ok(select.build_query_scalar().fetch_all(&self.pool).await?)
        })
    }

    fn store_messages<'a>(
        &'a self,
        messages: &'a [NewMessage],
        quota: MailboxQuota,
    ) -> Pending<'a, Vec<Admission>> {
        super::run(async move {
            if messages.is_empty() {
                return Ok(Vec::new());
            }
            let recipients = super::distinct(messages, |m| m.recipient_id);
            let senders = super::distinct(messages, |m| m.sender_id);
            let mut tx = self.begin_write().await?;
            // Every recipient's mailbox row exists, so that it can be locked:
            // concurrent batches for one mailbox take turns. A recipient
            // deleted meanwhile has none, and gets nothing.
            let mut ensure = sqlx::QueryBuilder::new(queries::ENSURE_MAILBOXES);
            super::push_id_list(&mut ensure, &recipients);
            ensure.push(" ON CONFLICT (user_id) DO NOTHING");
            ensure.build().execute(&mut *tx).await?;
            let mut select = sqlx::QueryBuilder::new(queries::MAILBOX_ROWS);
            super::push_id_list(&mut select, &recipients);
            select.push(" ORDER BY user_id");
            let usage: Vec<(i64, i64, i64, i64)> =
                select.build_query_as().fetch_all(&mut *tx).await?;
            let mut select = sqlx::QueryBuilder::new(queries::ACCEPTED_SENDERS);
            super::push_id_list(&mut select, &recipients);
            select.push(" AND friend_id IN ");
            super::push_id_list(&mut select, &senders);
            let accepted: Vec<(i64, i64)> = select.build_query_as().fetch_all(&mut *tx).await?;
            let verdicts = super::admit(messages, &usage, &accepted, quota);
            let admitted: Vec<(&NewMessage, bool)> = messages
                .iter()
                .zip(&verdicts)
                .filter_map(|(m, v)| v.as_ref().ok().map(|stranger| (m, *stranger)))
                .collect();
            let mut stored = Vec::with_capacity(admitted.len());
            // SQLite binds at most 32766 parameters per statement; eight per message.
            for chunk in admitted.chunks(4000) {
                let mut insert = sqlx::QueryBuilder::new(queries::INSERT_MESSAGES);
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
                insert.push(queries::RETURNING_MESSAGES);
                let rows: Vec<Message> = insert.build_query_as().fetch_all(&mut *tx).await?;
                stored.extend(rows);
            }
            tx.commit().await?;
            Ok(super::admissions(messages, verdicts, stored))
        })
    }

    fn mailbox_usage(&self, user: UserId) -> Pending<'_, MailboxUsage> {
        super::run(async move {
            let row: Option<(i64, i64, i64)> = sqlx::query_as(queries::MAILBOX_USAGE)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
            Ok(
                row.map_or_else(Default::default, |(messages, bytes, from_strangers)| {
                    super::usage(messages, bytes, from_strangers)
                }),
            )
        })
    }

    fn peek_unread(&self, recipient: UserId, page: Page) -> Pending<'_, Vec<Message>> {
        super::run(async move {
            Ok(sqlx::query_as(queries::PEEK_UNREAD)
                .bind(recipient)
                .bind(INBOX_PAGE)
                .bind(Utc::now())
                .bind(page.after)
                .bind(page.max_bytes_sql())
                .fetch_all(&self.pool)
                .await?)
        })
    }

    fn claim_unread(
        &self,
        recipient: UserId,
        lease: std::time::Duration,
        take_over: bool,
        page: Page,
    ) -> Pending<'_, Vec<InboxMessage>> {
        super::run(async move {
            let now = Utc::now();
            let until = crate::domain::time::after(now, lease);
            // Rows another claim or take holds are passed by (Postgres:
            // SKIP LOCKED), and the outer condition is checked again on
            // the rows taken, so no message is claimed twice.
            let mut claimed: Vec<InboxMessage> = sqlx::query_as(queries::CLAIM_UNREAD_SQLITE)
                .bind(recipient)
                .bind(until)
                .bind(now)
                .bind(INBOX_PAGE)
                .bind(take_over)
                .bind(page.after)
                .bind(page.max_bytes_sql())
                .fetch_all(&self.pool)
                .await?;
            claimed.sort_by_key(|m| m.message.id);
            Ok(claimed)
        })
    }

    fn release_claims<'a>(&'a self, recipient: UserId, ids: &'a [i64]) -> Pending<'a, ()> {
        super::run(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let mut release = sqlx::QueryBuilder::new(queries::RELEASE_CLAIMS);
            release.push_bind(recipient);
            release.push(" AND id IN ");
            super::push_id_list(&mut release, ids);
            release.build().execute(&self.pool).await?;
            Ok(())
        })
    }

    fn renew_claims<'a>(
        &'a self,
        recipient: UserId,
        ids: &'a [i64],
        until: DateTime<Utc>,
    ) -> Pending<'a, ()> {
        super::run(async move {
            if ids.is_empty() {
                return Ok(());
            }
            let mut renew = sqlx::QueryBuilder::new(queries::RENEW_CLAIMS);
            renew.push_bind(until);
            renew.push(" WHERE receiver_id = ");
            renew.push_bind(recipient);
            renew.push(" AND id IN ");
            super::push_id_list(&mut renew, ids);
            renew.build().execute(&self.pool).await?;
            Ok(())
        })
    }

    fn delete_read<'a>(&'a self, reads: &'a [(UserId, i64)]) -> Pending<'a, Vec<Acked>> {
        super::run(async move {
            let mut acked = Vec::new();
            // SQLite binds at most 32766 parameters per statement; three per id.
            for chunk in reads.chunks(8000) {
                // Found by id (the primary key), kept only if the recipient's.
                let mut delete = sqlx::QueryBuilder::new(queries::DELETE_READ);
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
                        .build_query_as::<Acked>()
                        .fetch_all(&self.pool)
                        .await?,
                );
            }
            Ok(acked)
        })
    }

    fn expire_messages(&self, sent_before: DateTime<Utc>, limit: i64) -> Pending<'_, u64> {
        super::run(async move {
            let expired = sqlx::query(queries::EXPIRE_MESSAGES)
                .bind(sent_before)
                .bind(limit)
                .execute(&self.pool)
                .await?;
            Ok(expired.rows_affected())
        })
    }

    fn take_unread(&self, recipient: UserId, page: Page) -> Pending<'_, Vec<Message>> {
        super::run(async move {
            // One statement. SQLite runs writers one at a time; in Postgres a
            // concurrent take or claim passes by the rows another one locked
            // (SKIP LOCKED: none waits on another, so none deadlocks).
            // Either way no message is handed out twice, and none stays
            // stored once handed out.
            // Claimed messages are being pushed: passed by, here too (the
            // outer condition is checked again on a row claimed meanwhile).
            let mut taken: Vec<Message> = sqlx::query_as(queries::TAKE_UNREAD_SQLITE)
                .bind(recipient)
                .bind(INBOX_PAGE)
                .bind(Utc::now())
                .bind(page.after)
                .bind(page.max_bytes_sql())
                .fetch_all(&self.pool)
                .await?;
            taken.sort_by_key(|m| m.id);
            Ok(taken)
        })
    }

    /// From a block reserved in `sqlite_sequence` (which the database file
    /// keeps, so a restart continues after it): one process owns the file,
    /// so ids follow the order in which it accepted messages.
    fn next_message_id_now(&self) -> Option<i64> {
        self.free_id()
    }

    fn next_message_id(&self) -> Pending<'_, i64> {
        super::run(super::next_id(
            || self.free_id(),
            &self.reserving,
            || async {
                if self.next_id.load(Ordering::Acquire)
                    < self.reserved_until.load(Ordering::Acquire)
                {
                    return Ok(()); // reserved meanwhile
                }
                let end = reserve_ids(&self.pool).await?;
                // Follows the last block; should anything else have moved the
                // sequence, ids below the new block are skipped.
                self.next_id.fetch_max(end - ID_BLOCK + 1, Ordering::AcqRel);
                self.reserved_until.store(end + 1, Ordering::Release);
                Ok(())
            },
        ))
    }
}

impl SqliteStore {
    /// An id from the reserved block; `None` (that id skipped) once it is spent.
    fn free_id(&self) -> Option<i64> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        (id < self.reserved_until.load(Ordering::Acquire)).then_some(id)
    }

    /// Adds tokens to the set kept in memory, dropping those that expired.
    fn remember_revoked(&self, tokens: impl IntoIterator<Item = (String, DateTime<Utc>)>) {
        let now = Utc::now();
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, until| *until >= now);
        revoked.extend(tokens);
    }
}

/// One process owns a SQLite file, so the set of revoked tokens it keeps in
/// memory is authoritative: checking a token costs no query. The table keeps
/// the set across restarts.
#[async_trait]
impl Revocations for SqliteStore {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), RevocationError> {
        super::insert_revocation(&self.pool, jti, expires_at).await?;
        self.remember_revoked([(jti.to_owned(), expires_at)]);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, RevocationError> {
        Ok(self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(jti))
    }

    async fn issued(
        &self,
        user: crate::domain::UserId,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), RevocationError> {
        super::insert_issued(&self.pool, user, jti, expires_at).await
    }

    async fn revoke_all(
        &self,
        user: crate::domain::UserId,
        keep: Option<&str>,
    ) -> Result<(), RevocationError> {
        let mut tx = self.begin_write().await.map_err(super::revocation_failed)?;
        let revoked = super::revoke_issued(&mut *tx, user, keep).await?;
        tx.commit().await.map_err(super::revocation_failed)?;
        self.remember_revoked(revoked);
        Ok(())
    }
}

super::refresh::refresh_tokens!(SqliteStore, sqlx::Transaction<'static, sqlx::Sqlite>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{revocation, store::contract};

    /// A store on a new database file, which lives as long as the value.
    struct Fresh(SqliteStore, tempfile::TempDir);

    async fn fresh() -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Fresh(SqliteStore::connect(&url, 4).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn store_contract_holds() {
        contract::users_are_unique_regardless_of_case(&fresh().await.0).await;
        contract::search_matches_literally_by_name(&fresh().await.0).await;
        contract::requests_become_contacts_on_both_sides(&fresh().await.0).await;
        contract::messages_are_read_once_in_order(&fresh().await.0).await;
        contract::concurrent_takes_never_share_a_message(&fresh().await.0).await;
        contract::old_messages_expire(&fresh().await.0).await;
        contract::mailboxes_hold_what_their_quota_allows(&fresh().await.0).await;
        contract::lookalike_names_are_duplicates(&fresh().await.0).await;
        contract::presence_consent_is_one_sided(&fresh().await.0).await;
        contract::accounts_change_and_go(&fresh().await.0).await;
        contract::claimed_messages_reach_nobody_else(&fresh().await.0).await;
        contract::message_ids_follow_acceptance_and_store_once(&fresh().await.0).await;
        contract::held_messages_wait_for_their_connection(&fresh().await.0).await;
        contract::unread_messages_come_a_page_at_a_time(&fresh().await.0).await;
    }

    #[tokio::test]
    async fn revocation_contract_holds() {
        revocation::contract::revoked_until_expiry(&fresh().await.0).await;
        revocation::contract::all_of_a_users_tokens_can_be_revoked(&fresh().await.0).await;
    }

    #[tokio::test]
    async fn refresh_contract_holds() {
        use crate::refresh::contract;
        contract::tokens_rotate_once_and_reuse_ends_the_session(&fresh().await.0).await;
        contract::tokens_lapse_unused(&fresh().await.0).await;
        contract::sessions_end_by_access_token_or_all_at_once(&fresh().await.0).await;
        contract::sessions_go_with_their_account(&fresh().await.0).await;
    }

    #[tokio::test]
    async fn revocations_survive_a_restart() {
        let Fresh(store, dir) = fresh().await;
        store
            .revoke("t", Utc::now() + chrono::Duration::minutes(5))
            .await
            .unwrap();
        drop(store);
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let reopened = SqliteStore::connect(&url, 1).await.unwrap();
        assert!(reopened.is_revoked("t").await.unwrap());
    }
}
