//! The embedded default: one SQLite file, nothing to install.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    QueryBuilder, Row, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::{
    Contact, ContactStatus, Credentials, INBOX_PAGE, InboxMessage, Message, NewMessage, NewUser,
    Store, StoreError, StoreResult, User, UserId,
};
use crate::{auth::revocation::Revocations, config::Visibility};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const USER_COLUMNS: &str = "u.id, u.username, u.email, u.public_key, u.created_at, u.last_seen";

pub struct SqliteStore {
    pool: SqlitePool,
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
        Ok(Self { pool })
    }
}

fn contact_from_row(row: &SqliteRow) -> Result<Contact, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Contact {
        other: sqlx::FromRow::from_row(row)?,
        status: if status == "accepted" {
            ContactStatus::Accepted
        } else {
            ContactStatus::Pending
        },
        created_at: row.try_get("contact_created_at")?,
    })
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let created = sqlx::query_as::<_, User>(
            "INSERT INTO users (username, username_key, email, email_key, password_hash, public_key, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             RETURNING id, username, email, public_key, created_at, last_seen",
        )
        .bind(&user.username)
        .bind(&user.username_key)
        .bind(&user.email)
        .bind(&user.email_key)
        .bind(&user.password_hash)
        .bind(&user.public_key)
        .bind(Utc::now())
        .fetch_one(&self.pool)
        .await;
        match created {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate),
            other => Ok(other?),
        }
    }

    async fn credentials(&self, username_key: &str) -> StoreResult<Option<Credentials>> {
        Ok(
            sqlx::query_as("SELECT id, username, password_hash FROM users WHERE username_key = ?")
                .bind(username_key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn user_by_username(&self, username_key: &str) -> StoreResult<Option<User>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.username_key = ?"
        ))
        .bind(username_key)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn search_users(
        &self,
        needle: &str,
        exclude: UserId,
        limit: i64,
    ) -> StoreResult<Vec<User>> {
        // instr() matches literally: '%' and '_' in the needle are plain characters.
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users u
             WHERE instr(u.username_key, ?) > 0 AND u.id <> ?
             ORDER BY u.username_key LIMIT ?"
        ))
        .bind(needle)
        .bind(exclude)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn touch_last_seen(&self, id: UserId, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE users SET last_seen = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_contact(&self, owner: UserId, other: UserId) -> StoreResult<Contact> {
        let now = Utc::now();
        // The first statement writes, so the transaction takes the write lock at once
        // and cannot deadlock upgrading a read lock.
        let mut tx = self.pool.begin().await?;
        let accepted = sqlx::query(
            "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES (?, ?, 'accepted', ?)
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
            return Err(StoreError::AlreadyContact);
        };
        let created_at: DateTime<Utc> = row.try_get("created_at")?;
        sqlx::query(
            "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES (?, ?, 'pending', ?)
             ON CONFLICT (user_id, friend_id) DO NOTHING",
        )
        .bind(other)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let user = sqlx::query_as::<_, User>(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?"
        ))
        .bind(other)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Contact {
            other: user,
            status: ContactStatus::Accepted,
            created_at,
        })
    }

    async fn contacts(&self, owner: UserId, skip: i64, limit: i64) -> StoreResult<Vec<Contact>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, c.status, c.created_at AS contact_created_at
             FROM contacts c JOIN users u ON u.id = c.friend_id
             WHERE c.user_id = ? AND c.status = 'accepted'
             ORDER BY u.username_key LIMIT ? OFFSET ?"
        ))
        .bind(owner)
        .bind(limit)
        .bind(skip)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(contact_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn pending_requests(&self, owner: UserId) -> StoreResult<Vec<Contact>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, c.status, c.created_at AS contact_created_at
             FROM contacts c JOIN users u ON u.id = c.friend_id
             WHERE c.user_id = ? AND c.status = 'pending'
             ORDER BY c.created_at, u.id"
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(contact_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn accept_request(
        &self,
        owner: UserId,
        requester: UserId,
    ) -> StoreResult<Option<Contact>> {
        let mut tx = self.pool.begin().await?;
        let accepted = sqlx::query(
            "UPDATE contacts SET status = 'accepted'
             WHERE user_id = ? AND friend_id = ? AND status = 'pending'
             RETURNING created_at",
        )
        .bind(owner)
        .bind(requester)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = accepted else {
            return Ok(None);
        };
        let created_at: DateTime<Utc> = row.try_get("created_at")?;
        sqlx::query(
            "INSERT INTO contacts (user_id, friend_id, status, created_at) VALUES (?, ?, 'accepted', ?)
             ON CONFLICT (user_id, friend_id) DO UPDATE SET status = 'accepted'",
        )
        .bind(requester)
        .bind(owner)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await?;
        let user = sqlx::query_as::<_, User>(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?"
        ))
        .bind(requester)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Contact {
            other: user,
            status: ContactStatus::Accepted,
            created_at,
        }))
    }

    async fn remove_contact(&self, owner: UserId, other: UserId) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM contacts
             WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
        )
        .bind(owner)
        .bind(other)
        .bind(other)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn visible_contacts(
        &self,
        viewer: UserId,
        visibility: Visibility,
    ) -> StoreResult<Vec<User>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM contacts c JOIN users u ON u.id = c.friend_id
             WHERE c.user_id = ? AND c.status = 'accepted'
               AND (? OR EXISTS (SELECT 1 FROM contacts r
                                 WHERE r.user_id = c.friend_id AND r.friend_id = c.user_id
                                   AND r.status = 'accepted'))
             ORDER BY u.username_key"
        ))
        .bind(viewer)
        .bind(visibility == Visibility::Open)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn visible_user(
        &self,
        viewer: UserId,
        username_key: &str,
        visibility: Visibility,
    ) -> StoreResult<Option<User>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users u
             WHERE u.username_key = ?
               AND (? OR u.id = ? OR EXISTS (SELECT 1 FROM contacts r
                                             WHERE r.user_id = u.id AND r.friend_id = ?
                                               AND r.status = 'accepted'))"
        ))
        .bind(username_key)
        .bind(visibility == Visibility::Open)
        .bind(viewer)
        .bind(viewer)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn watchers(&self, subject: UserId) -> StoreResult<Vec<UserId>> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM contacts WHERE friend_id = ? AND status = 'accepted'",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn store_messages(&self, messages: &[NewMessage]) -> StoreResult<Vec<Message>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut stored = Vec::with_capacity(messages.len());
        // SQLite binds at most 32766 parameters per statement; four per message.
        for chunk in messages.chunks(8000) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO messages (sender_id, receiver_id, encrypted_content, sent_at) ",
            );
            insert.push_values(chunk, |mut row, m| {
                row.push_bind(m.sender_id)
                    .push_bind(m.receiver_id)
                    .push_bind(&m.content)
                    .push_bind(m.sent_at);
            });
            insert.push(" RETURNING id, sender_id, receiver_id, encrypted_content, sent_at");
            let mut rows: Vec<Message> = insert.build_query_as().fetch_all(&self.pool).await?;
            rows.sort_by_key(|m| m.id);
            stored.extend(rows);
        }
        Ok(stored)
    }

    async fn peek_unread(&self, receiver: UserId) -> StoreResult<Vec<InboxMessage>> {
        Ok(sqlx::query_as(
            "SELECT m.id, m.sender_id, m.receiver_id, m.encrypted_content, m.sent_at,
                    u.username AS sender_username
             FROM messages m JOIN users u ON u.id = m.sender_id
             WHERE m.receiver_id = ? AND m.read_at IS NULL
             ORDER BY m.id LIMIT ?",
        )
        .bind(receiver)
        .bind(INBOX_PAGE)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn mark_read(&self, receiver: UserId, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut update = QueryBuilder::new("UPDATE messages SET read_at = ");
        update.push_bind(Utc::now());
        update.push(" WHERE read_at IS NULL AND receiver_id = ");
        update.push_bind(receiver);
        update.push(" AND id IN (");
        let mut list = update.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        update.push(")");
        update.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn take_unread(&self, receiver: UserId) -> StoreResult<Vec<Message>> {
        // One statement: SQLite runs writers one at a time, so two concurrent takes
        // can never both see a message unread.
        let mut taken: Vec<Message> = sqlx::query_as(
            "UPDATE messages SET read_at = ?
             WHERE id IN (SELECT id FROM messages WHERE receiver_id = ? AND read_at IS NULL
                          ORDER BY id LIMIT ?)
             RETURNING id, sender_id, receiver_id, encrypted_content, sent_at",
        )
        .bind(Utc::now())
        .bind(receiver)
        .bind(INBOX_PAGE)
        .fetch_all(&self.pool)
        .await?;
        taken.sort_by_key(|m| m.id);
        Ok(taken)
    }
}

#[async_trait]
impl Revocations for SqliteStore {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        let now = Utc::now();
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT 1 FROM revoked_tokens WHERE jti = ?")
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }
}
