//! The embedded default: one SQLite file, nothing to install.

use std::{
    collections::HashMap,
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
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    revocation::{RevocationError, Revocations},
    store::{Pending, Store},
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
    super::store_methods!(
        sqlx::sqlite::SqliteRow,
        concat!(
            "SELECT json_group_array(json_object(",
            super::user_json_fields!(),
            "))",
            super::visible_contacts_where!()
        ),
        // Mailbox rows are locked for a quota check; SQLite's one writer needs no lock.
        "",
        "",
    );

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
        let revoked = super::revoke_issued(&self.pool, user, keep).await?;
        self.remember_revoked(revoked);
        Ok(())
    }
}

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
