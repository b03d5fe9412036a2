//! Postgres, shared by any number of replicas.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    revocation::{RevocationError, Revocations},
    store::{Pending, Store},
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PostgresStore {
    pool: PgPool,
    /// Message ids taken from the sequence a block at a time.
    ids: std::sync::Mutex<IdBlock>,
    /// Held while a new block is fetched.
    fetching: tokio::sync::Mutex<()>,
}

/// How long a block of ids is used at most: ids given by different replicas
/// follow acceptance order for messages accepted further apart than this.
const ID_BLOCK_LIFETIME: Duration = Duration::from_millis(50);

/// Ids fetched from the sequence in one round trip, given out in order.
struct IdBlock {
    ids: std::collections::VecDeque<i64>,
    fetched: std::time::Instant,
    /// How many to fetch next: doubled when a block ran out within its
    /// lifetime, halved when most of one lapsed unused.
    size: i64,
}

impl IdBlock {
    const MIN: i64 = 16;
    const MAX: i64 = 8192;

    fn take(&mut self) -> Option<i64> {
        if self.fetched.elapsed() >= ID_BLOCK_LIFETIME {
            if self.ids.len() as i64 > self.size / 2 {
                self.size = (self.size / 2).max(Self::MIN);
            }
            self.ids.clear();
        }
        self.ids.pop_front()
    }
}

impl PostgresStore {
    /// Connects and applies migrations. Replicas starting at once are safe: the
    /// migrator holds a Postgres advisory lock while it works.
    pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid postgres:// URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            // Short, so that an unreachable database is a quick 503, not a hang.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .context("connecting to Postgres")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("applying Postgres migrations")?;
        Ok(Self {
            pool,
            ids: std::sync::Mutex::new(IdBlock {
                ids: Default::default(),
                fetched: std::time::Instant::now(),
                size: IdBlock::MIN,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }
}

impl PostgresStore {
    fn free_id(&self) -> Option<i64> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Store for PostgresStore {
    super::store_methods!(
        sqlx::postgres::PgRow,
        concat!(
            "SELECT COALESCE(json_agg(json_build_object(",
            super::user_json_fields!(),
            ")), '[]')::text",
            super::visible_contacts_where!()
        ),
        // Mailbox rows are locked for a quota check; SQLite's one writer needs no lock.
        " FOR UPDATE",
        // Messages being claimed or taken by one statement are passed by by others.
        " FOR UPDATE SKIP LOCKED",
    );

    /// From the sequence, a block at a time (no round trip per message): a
    /// replica's ids grow, and since a block is used for
    /// [`ID_BLOCK_LIFETIME`] at most, an id given on any replica is greater
    /// than every id given more than that long before.
    fn next_message_id_now(&self) -> Option<i64> {
        self.free_id()
    }

    fn next_message_id(&self) -> Pending<'_, i64> {
        super::run(super::next_id(
            || self.free_id(),
            &self.fetching,
            || async {
                let size = self.ids.lock().unwrap_or_else(|p| p.into_inner()).size;
                let mut ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT nextval('messages_id_seq') FROM generate_series(1, $1)",
                )
                .bind(size)
                .fetch_all(&self.pool)
                .await?;
                ids.sort_unstable();
                let mut block = self.ids.lock().unwrap_or_else(|p| p.into_inner());
                // The last one ran out within its lifetime: fetch more next time.
                if block.fetched.elapsed() < ID_BLOCK_LIFETIME {
                    block.size = (block.size * 2).min(IdBlock::MAX);
                }
                block.ids = ids.into();
                block.fetched = std::time::Instant::now();
                Ok(())
            },
        ))
    }
}

/// Used only without Redis (then revoked tokens live there, shared by replicas).
#[async_trait]
impl Revocations for PostgresStore {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), RevocationError> {
        super::insert_revocation(&self.pool, jti, expires_at).await
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, RevocationError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)")
            .bind(jti)
            .fetch_one(&self.pool)
            .await
            .map_err(super::revocation_failed)
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
        super::revoke_issued(&self.pool, user, keep).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    //! The contracts against a real Postgres (`TEST_DATABASE_URL`), each case
    //! in a schema of its own.
    use super::*;
    use crate::{revocation, store::contract};

    async fn fresh() -> PostgresStore {
        let base = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&base).await.expect("Postgres reachable");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        PostgresStore::connect(&url, 4).await.unwrap()
    }

    #[tokio::test]
    #[ignore = "needs Postgres: run with --include-ignored (CI does)"]
    async fn store_contract_holds() {
        contract::users_are_unique_regardless_of_case(&fresh().await).await;
        contract::search_matches_literally_by_name(&fresh().await).await;
        contract::requests_become_contacts_on_both_sides(&fresh().await).await;
        contract::messages_are_read_once_in_order(&fresh().await).await;
        contract::concurrent_takes_never_share_a_message(&fresh().await).await;
        contract::old_messages_expire(&fresh().await).await;
        contract::mailboxes_hold_what_their_quota_allows(&fresh().await).await;
        contract::lookalike_names_are_duplicates(&fresh().await).await;
        contract::presence_consent_is_one_sided(&fresh().await).await;
        contract::accounts_change_and_go(&fresh().await).await;
        contract::claimed_messages_reach_nobody_else(&fresh().await).await;
        contract::message_ids_follow_acceptance_and_store_once(&fresh().await).await;
        contract::held_messages_wait_for_their_connection(&fresh().await).await;
        contract::unread_messages_come_a_page_at_a_time(&fresh().await).await;
    }

    #[tokio::test]
    #[ignore = "needs Postgres: run with --include-ignored (CI does)"]
    async fn revocation_contract_holds() {
        revocation::contract::revoked_until_expiry(&fresh().await).await;
        revocation::contract::all_of_a_users_tokens_can_be_revoked(&fresh().await).await;
    }
}
