//! The embedded default: one SQLite file, nothing to install.

use std::{collections::HashMap, str::FromStr, sync::RwLock, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::StoreResult;
use crate::auth::revocation::Revocations;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
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
        Ok(Self {
            pool,
            revoked: RwLock::new(revoked.into_iter().collect()),
        })
    }
}

super::sql::sql_store!(
    SqliteStore,
    sqlx::sqlite::SqliteRow,
    concat!(
        "SELECT json_group_array(json_object(",
        super::sql::user_json_fields!(),
        "))",
        super::sql::visible_contacts_where!()
    )
);

/// One process owns a SQLite file, so the set of revoked tokens it keeps in
/// memory is authoritative: checking a token costs no query. The table keeps
/// the set across restarts.
#[async_trait]
impl Revocations for SqliteStore {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        self.insert_revocation(jti, expires_at).await?;
        let now = Utc::now();
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, until| *until >= now);
        revoked.insert(jti.to_owned(), expires_at);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        Ok(self
            .revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(jti))
    }
}
