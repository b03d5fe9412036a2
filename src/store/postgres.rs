//! Postgres, shared by any number of replicas.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

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

super::sql::sql_store!(PostgresStore, sqlx::postgres::PgRow);
