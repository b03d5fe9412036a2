//! Postgres, shared by any number of replicas.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::StoreResult;
use crate::auth::revocation::Revocations;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PostgresStore {
    pool: PgPool,
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
        Ok(Self { pool })
    }
}

super::sql::sql_store!(
    PostgresStore,
    sqlx::postgres::PgRow,
    concat!(
        "SELECT COALESCE(json_agg(json_build_object(",
        super::sql::user_json_fields!(),
        ")), '[]')::text",
        super::sql::visible_contacts_where!()
    )
);

/// Used only without Redis (then revoked tokens live there, shared by replicas).
#[async_trait]
impl Revocations for PostgresStore {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        self.insert_revocation(jti, expires_at).await
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)")
                .bind(jti)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
