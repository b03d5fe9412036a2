//! The Postgres store's connections: to Postgres itself, or through a pooler
//! in transaction mode that keeps no prepared statements (PgBouncer before
//! 1.21, as Debian 12 ships it; `DATABASE_POOLER=transaction`).
//!
//! Such a pooler lends a server connection to a client for one transaction
//! and then to anyone. sqlx names the statements it prepares and caches them
//! per client connection, and it prepares (Parse … Sync) and runs (Bind …
//! Sync) a statement in two exchanges, each ending a transaction of its own
//! outside `BEGIN`. Through such a pooler a cached name is bound on a server
//! connection that never prepared it ("prepared statement sqlx_s_3 does not
//! exist"), two clients' names collide on one server connection, and an
//! unnamed statement parsed on one server connection is bound on another.
//! So there every statement is unnamed, and one outside a transaction runs
//! inside one of its own: both exchanges reach the same server connection,
//! and nothing outlives the transaction.
//!
//! [`PgDb`] stands where the store used a `PgPool`, [`PgTx`] where it used
//! a `Transaction`: the store's SQL runs unchanged on both.

use std::ops::{Deref, DerefMut};

use futures_util::{StreamExt as _, TryStreamExt as _, future::BoxFuture, stream::BoxStream};
use sqlx::{
    Either, Execute, Executor, PgPool, Postgres, Transaction,
    error::BoxDynError,
    postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo},
};

use crate::config::Pooler;

/// The store's pool of connections, and how statements must run on them.
#[derive(Debug, Clone)]
pub struct PgDb {
    pool: PgPool,
    pooler: Pooler,
}

/// A transaction of the store's (see [`PgDb::begin`]).
#[derive(Debug)]
pub struct PgTx(PgTxConnection);

/// What a [`PgTx`] runs statements on.
#[derive(Debug)]
pub struct PgTxConnection {
    tx: Transaction<'static, Postgres>,
    pooler: Pooler,
}

/// A statement that stays unnamed (and uncached) behind a transaction pooler.
struct Statement<E> {
    query: E,
    pooler: Pooler,
}

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Statement<E> {
    fn sql(&self) -> &'q str {
        self.query.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.query.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.query.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.pooler == Pooler::None && self.query.persistent()
    }
}

impl PgDb {
    pub fn new(pool: PgPool, pooler: Pooler) -> Self {
        Self { pool, pooler }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn begin(&self) -> Result<PgTx, sqlx::Error> {
        Ok(PgTx(PgTxConnection {
            tx: self.pool.begin().await?,
            pooler: self.pooler,
        }))
    }

    fn statement<E>(&self, query: E) -> Statement<E> {
        Statement {
            query,
            pooler: self.pooler,
        }
    }
}

impl PgTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.0.tx.commit().await
    }
}

impl Deref for PgTx {
    type Target = PgTxConnection;

    fn deref(&self) -> &PgTxConnection {
        &self.0
    }
}

impl DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut PgTxConnection {
        &mut self.0
    }
}

// Like sqlx's own for `&Pool`: for any lifetime, the pool cloned (a reference
// count) into what is returned.
impl<'c> Executor<'c> for &'_ PgDb {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = self.statement(query);
        match self.pooler {
            Pooler::None => self.pool.fetch_many(statement),
            // Whole, then committed: a stream cannot hold the transaction open
            // for the caller. The store reads a page at a time anyway.
            Pooler::Transaction => futures_util::stream::once({
                let pool = self.pool.clone();
                async move {
                    let mut tx = pool.begin().await?;
                    let results: Vec<_> = (&mut *tx).fetch_many(statement).try_collect().await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(futures_util::stream::iter(results.into_iter().map(Ok)))
                }
            })
            .try_flatten()
            .boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = self.statement(query);
        match self.pooler {
            Pooler::None => self.pool.fetch_optional(statement),
            Pooler::Transaction => Box::pin({
                let pool = self.pool.clone();
                async move {
                    let mut tx = pool.begin().await?;
                    let row = (&mut *tx).fetch_optional(statement).await?;
                    tx.commit().await?;
                    Ok(row)
                }
            }),
        }
    }

    // The store prepares nothing explicitly (its statements are prepared as
    // they run, above); these two are sqlx's own.
    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

impl<'c> Executor<'c> for &'c mut PgTxConnection {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = Statement {
            query,
            pooler: self.pooler,
        };
        (&mut *self.tx).fetch_many(statement)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let statement = Statement {
            query,
            pooler: self.pooler,
        };
        (&mut *self.tx).fetch_optional(statement)
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&mut *self.tx).prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&mut *self.tx).describe(sql)
    }
}
