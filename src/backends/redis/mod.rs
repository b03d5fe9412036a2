//! Everything Redis: the command connection and its deadline, the key space,
//! and the Redis engines (presence, fan-out, revoked tokens, rate limits,
//! client ids), with their
//! Lua scripts as `.lua` files beside them.

use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, anyhow};
use redis::{
    Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
};

use crate::metrics;

pub mod bus;
pub mod client_ids;
pub mod keys;
pub mod presence;
pub mod ratelimit;
mod redelivery;
pub mod revocations;
mod script;
pub mod topology;

pub use bus::RedisBus;
pub use client_ids::RedisClientIds;
pub use keys::Keyspace;
pub use presence::RedisPresence;
pub use ratelimit::RedisLimiter;
pub use revocations::RedisRevocations;
pub use topology::Topology;

/// No Redis call waits longer than this: a dead Redis is a quick 503.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis commands over one shared multiplexed connection, on which concurrent
/// commands pipeline. It comes from the deadpool pool, which checks health
/// when it hands a connection out; checking on every command would double the
/// round trips, so a connection is kept until it fails, then replaced. Taken
/// out of the pool, a connection is never handed out again: after a Sentinel
/// failover the next one is made to the master the sentinels name then.
pub struct RedisCommands {
    pool: Pool,
    shared: RwLock<Option<RedisConnection>>,
}

/// A connection to the topology: to one node (a single one, or a sentinel
/// set's master), or to a whole cluster, where each command goes to the shard
/// of its keys (a pipeline's commands must share one slot).
#[derive(Clone)]
pub enum RedisConnection {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConnection {
    /// Runs commands whose keys may live on different shards, answers in
    /// order: one pipeline to a node; on a cluster, all at once over its
    /// multiplexed connections (those to one shard are written together).
    pub async fn each<T: FromRedisValue>(&mut self, commands: &[Cmd]) -> RedisResult<Vec<T>> {
        match self {
            Self::Node(c) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command.clone());
                }
                pipe.query_async(c).await
            }
            Self::Cluster(c) => {
                futures_util::future::try_join_all(commands.iter().map(|command| {
                    let mut c = c.clone();
                    async move { command.query_async(&mut c).await }
                }))
                .await
            }
        }
    }
}

/// A pool from its builder: at most `size` connections, every wait bounded by
/// [`REDIS_TIMEOUT`]. (The two pools' builders are distinct types.)
macro_rules! sized {
    ($builder:expr, $size:expr) => {
        $builder
            .context("REDIS_URL")?
            .max_size($size)
            .wait_timeout(Some(REDIS_TIMEOUT))
            .create_timeout(Some(REDIS_TIMEOUT))
            .recycle_timeout(Some(REDIS_TIMEOUT))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .context("creating the Redis pool")?
    };
}

/// The pool of the topology: one node's, the sentinel-named master's, or the
/// cluster's.
enum Pool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

impl RedisCommands {
    /// A pool of at most `pool_size` connections to the topology's master;
    /// connects lazily.
    pub fn open(topology: &Topology, pool_size: usize) -> anyhow::Result<Arc<Self>> {
        let pool = match topology {
            Topology::Single(url) => Pool::Single(sized!(
                deadpool_redis::Config::from_url(url.as_str()).builder(),
                pool_size
            )),
            Topology::Sentinel {
                sentinels,
                master,
                credentials,
            } => {
                let mut config = deadpool_redis::sentinel::Config::from_urls(
                    sentinels.clone(),
                    master.clone(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                config.node_connection_info =
                    Some(deadpool_redis::sentinel::SentinelNodeConnectionInfo {
                        tls_mode: None,
                        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                            db: 0,
                            username: credentials.username.clone(),
                            password: credentials.password.clone(),
                            protocol: Default::default(),
                        }),
                    });
                Pool::Sentinel(sized!(config.builder(), pool_size))
            }
            Topology::Cluster { nodes } => Pool::Cluster(sized!(
                deadpool_redis::cluster::Config::from_urls(nodes.clone()).builder(),
                pool_size
            )),
        };
        Ok(Arc::new(Self {
            pool,
            shared: RwLock::default(),
        }))
    }

    async fn connection(&self) -> anyhow::Result<RedisConnection> {
        if let Some(conn) = self
            .shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(conn);
        }
        let conn = match &self.pool {
            Pool::Single(pool) => {
                RedisConnection::Node(deadpool_redis::Connection::take(pool.get().await?))
            }
            Pool::Sentinel(pool) => RedisConnection::Node(
                deadpool_redis::sentinel::Connection::take(pool.get().await?),
            ),
            Pool::Cluster(pool) => RedisConnection::Cluster(
                deadpool_redis::cluster::Connection::take(pool.get().await?),
            ),
        };
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Runs one Redis interaction with a deadline; a failure retires the connection
/// and is counted in `secchat_backend_errors_total{backend="redis"}`.
pub async fn with_redis<T, F, Fut>(redis: &RedisCommands, work: F) -> anyhow::Result<T>
where
    F: FnOnce(RedisConnection) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let result = tokio::time::timeout(REDIS_TIMEOUT, async {
        let conn = redis.connection().await?;
        Ok(work(conn).await?)
    })
    .await
    .map_err(|_| anyhow!("Redis did not answer within {REDIS_TIMEOUT:?}"))
    .and_then(|r| r);
    if result.is_err() {
        metrics::backend_error(metrics::Backend::Redis);
        redis.forget();
    }
    result
}

/// Wall-clock milliseconds, as the scripts and stored values count time.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real Redis for the engines' contract tests (`TEST_REDIS_URL`, default
    //! the local one), each test under a key prefix of its own.
    use super::*;

    pub fn url() -> String {
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    pub fn commands() -> (Arc<RedisCommands>, Keyspace) {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let topology = Topology::parse(&url()).expect("a valid TEST_REDIS_URL");
        (
            RedisCommands::open(&topology, 4).expect("a valid TEST_REDIS_URL"),
            Keyspace::new(&prefix, &topology),
        )
    }
}
