//! Presence in Redis, shared by every replica.
//!
//! - `presence:{user}`: hash `{ip, port}` whose TTL is the lease;
//! - `conns:{user}`: hash `"{replica}|{jti}" -> open WebSockets`, TTL the lease;
//! - `replicas`: sorted set of replicas scored by when their liveness lapses.
//!
//! Counts of a replica that stopped renewing (it died) are ignored and dropped,
//! so its users go offline within one lease. Each multi-step change is one Lua
//! script, atomic in Redis.

use std::{
    future::Future,
    sync::{Arc, LazyLock, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::anyhow;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_redis::Pool;
use redis::Script;
use redis::aio::MultiplexedConnection;

use super::{Endpoint, Held, Presence, PresenceError, PresenceResult};
use crate::{
    auth::revocation::Revocations,
    keyspace::Keyspace,
    store::{StoreError, StoreResult, UserId},
};

/// No Redis call waits longer than this: a dead Redis is a quick 503.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Lua shared by the scripts: the live `{field, count}` pairs of a connections
/// hash, dropping those of replicas that are no longer alive.
const LIVE_FIELDS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live_fields(conns, replicas)
  local now = now_ms()
  local raw = redis.call('HGETALL', conns)
  local alive, live = {}, {}
  for i = 1, #raw, 2 do
    local field, count = raw[i], tonumber(raw[i + 1])
    local replica = string.match(field, '^([^|]*)|')
    local ok = alive[replica]
    if ok == nil then
      local until_ms = redis.call('ZSCORE', replicas, replica)
      ok = until_ms ~= false and tonumber(until_ms) > now
      alive[replica] = ok
    end
    if ok and count > 0 then
      table.insert(live, {field, count})
    else
      redis.call('HDEL', conns, field)
    end
  end
  return live
end
local function total(live)
  local n = 0
  for _, f in ipairs(live) do n = n + f[2] end
  return n
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LIVE_FIELDS}\n{body}"))
}

/// KEYS: presence, conns, replicas, online. ARGV: lease ms, field, ip, port, user.
static OPEN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'ip', ARGV[3], 'port', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[1]), ARGV[5])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return total(live_fields(KEYS[2], KEYS[3]))
"#,
    )
});

/// KEYS: conns, replicas. ARGV: field.
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return total(live_fields(KEYS[1], KEYS[2]))
"#,
    )
});

/// KEYS: presence, conns, replicas, online. ARGV: jti, user. Returns 1 when
/// another token still holds a connection (the user stays online), else ends
/// the lease.
static SIGN_OFF: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
for _, f in ipairs(live_fields(KEYS[2], KEYS[3])) do
  local jti = string.sub(f[1], string.find(f[1], '|', 1, true) + 1)
  if jti ~= ARGV[1] then return 1 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return 0
"#,
    )
});

/// KEYS: replicas, online, then (presence, conns) per held entry. ARGV: replica,
/// lease ms, then (field, ip, port, count, user) per entry. Marks the replica
/// alive and renews (or, after Redis lost them, restores) what it holds.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for i = 3, #KEYS, 2 do
  local a = 3 + (i - 3) / 2 * 5
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'ip', ARGV[a + 1], 'port', ARGV[a + 2])
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
  redis.call('HSETNX', KEYS[i + 1], ARGV[a], ARGV[a + 3])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[a + 4])
end
return 0
"#,
    )
});

pub struct RedisPresence {
    redis: Arc<RedisCommands>,
    keys: Keyspace,
    lease: Duration,
    /// This replica's name in connection fields.
    replica: String,
}

/// Redis commands over one shared multiplexed connection, on which concurrent
/// commands pipeline. It comes from the deadpool pool, which checks health
/// when it hands a connection out; checking on every command would double the
/// round trips, so a connection is kept until it fails, then replaced.
pub struct RedisCommands {
    pool: Pool,
    shared: RwLock<Option<MultiplexedConnection>>,
}

impl RedisCommands {
    pub fn new(pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            shared: RwLock::default(),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, deadpool_redis::PoolError> {
        if let Some(conn) = self
            .shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(conn);
        }
        let conn = deadpool_redis::Connection::take(self.pool.get().await?);
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Runs one Redis interaction with a deadline; a failure retires the connection.
pub async fn with_redis<T, F, Fut>(redis: &RedisCommands, work: F) -> anyhow::Result<T>
where
    F: FnOnce(MultiplexedConnection) -> Fut,
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
        crate::metrics::backend_error(crate::metrics::Backend::Redis);
        redis.forget();
    }
    result
}

impl RedisPresence {
    /// Registers this replica as alive; fails if Redis does not answer.
    pub async fn connect(
        redis: Arc<RedisCommands>,
        keys: Keyspace,
        lease: Duration,
        replica: String,
    ) -> anyhow::Result<Self> {
        let presence = Self {
            redis,
            keys,
            lease,
            replica,
        };
        presence.renew(&[]).await?;
        Ok(presence)
    }

    fn field(&self, jti: &str) -> String {
        format!("{}|{jti}", self.replica)
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    async fn run<T: Send, F, Fut>(&self, work: F) -> PresenceResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        with_redis(&self.redis, work).await.map_err(PresenceError)
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn ping(&self) -> PresenceResult<()> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    async fn announce(&self, user: UserId, at: Endpoint) -> PresenceResult<()> {
        let key = self.keys.presence(user);
        let online = self.keys.online();
        let lease = self.lease_ms();
        let until = now_ms() + lease as i64;
        self.run(|mut c| async move {
            redis::pipe()
                .atomic()
                .zadd(&online, user, until)
                .ignore()
                .hset_multiple(
                    &key,
                    &[("ip", at.ip.to_string()), ("port", at.port.to_string())],
                )
                .ignore()
                .pexpire(&key, lease as i64)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn connection_opened(
        &self,
        user: UserId,
        jti: &str,
        fallback: Endpoint,
    ) -> PresenceResult<u32> {
        let mut call = OPEN.prepare_invoke();
        call.key(self.keys.presence(user))
            .key(self.keys.connections(user))
            .key(self.keys.replicas())
            .key(self.keys.online())
            .arg(self.lease_ms())
            .arg(self.field(jti))
            .arg(fallback.ip.to_string())
            .arg(fallback.port)
            .arg(user);
        self.run(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    async fn connection_closed(&self, user: UserId, jti: &str) -> PresenceResult<u32> {
        let mut call = CLOSE.prepare_invoke();
        call.key(self.keys.connections(user))
            .key(self.keys.replicas())
            .arg(self.field(jti));
        self.run(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    async fn renew(&self, held: &[Held]) -> PresenceResult<()> {
        let mut call = RENEW.prepare_invoke();
        call.key(self.keys.replicas())
            .key(self.keys.online())
            .arg(&self.replica)
            .arg(self.lease_ms());
        for h in held {
            call.key(self.keys.presence(h.user))
                .key(self.keys.connections(h.user))
                .arg(self.field(&h.jti))
                .arg(h.at.ip.to_string())
                .arg(h.at.port)
                .arg(h.connections)
                .arg(h.user);
        }
        self.run(|mut c| async move { call.invoke_async::<i64>(&mut c).await.map(drop) })
            .await
    }

    async fn sign_off(&self, user: UserId, jti: &str) -> PresenceResult<bool> {
        let mut call = SIGN_OFF.prepare_invoke();
        call.key(self.keys.presence(user))
            .key(self.keys.connections(user))
            .key(self.keys.replicas())
            .key(self.keys.online())
            .arg(jti)
            .arg(user);
        let others: i64 = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(others == 1)
    }

    async fn count_online(&self) -> PresenceResult<u64> {
        let online = self.keys.online();
        let now = now_ms();
        self.run(|mut c| async move {
            let (count,): (u64,) = redis::pipe()
                .zrembyscore(&online, "-inf", now)
                .ignore()
                .zcard(&online)
                .query_async(&mut c)
                .await?;
            Ok(count)
        })
        .await
    }

    async fn locate(&self, users: &[UserId]) -> PresenceResult<Vec<Option<Endpoint>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HMGET")
                .arg(self.keys.presence(*user))
                .arg("ip")
                .arg("port");
        }
        let rows: Vec<(Option<String>, Option<u16>)> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(ip, port)| {
                Some(Endpoint {
                    ip: ip?.parse().ok()?,
                    port: port?,
                })
            })
            .collect())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[async_trait]
impl Revocations for RedisPresence {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<()> {
        let key = self.keys.revoked(jti);
        let ttl_ms = (expires_at.timestamp_millis() - now_ms()).max(1000) + 10_000;
        with_redis(&self.redis, |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .map_err(StoreError::Unavailable)
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        let key = self.keys.revoked(jti);
        with_redis(&self.redis, |mut c| async move {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
        .map_err(StoreError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    //! The presence contract against a real Redis (`TEST_REDIS_URL`, default the
    //! local one), each test under its own key prefix.
    use super::*;
    use crate::presence::contract;

    async fn presence(lease: Duration) -> RedisPresence {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        RedisPresence::connect(
            RedisCommands::new(pool),
            Keyspace::new(&prefix),
            lease,
            "r1".into(),
        )
        .await
        .expect("Redis reachable (set TEST_REDIS_URL)")
    }

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        let minute = Duration::from_secs(60);
        contract::announce_and_locate(&presence(minute).await).await;
        contract::connections_keep_known_address(&presence(minute).await).await;
        contract::sign_off_respects_other_devices(&presence(minute).await).await;
        contract::renew_restores_what_was_lost(&presence(minute).await).await;
        contract::lease_runs_out_unless_renewed(&presence(Duration::from_secs(1)).await).await;
    }

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn a_dead_replicas_connections_stop_counting() {
        let lease = Duration::from_secs(1);
        let dead = presence(lease).await;
        let at = Endpoint {
            ip: "10.0.0.1".parse().unwrap(),
            port: 1,
        };
        dead.connection_opened(1, "t", at).await.unwrap();
        // Another replica on the same keys, which keeps renewing.
        let alive = RedisPresence {
            redis: dead.redis.clone(),
            keys: dead.keys.clone(),
            lease,
            replica: "r2".into(),
        };
        tokio::time::sleep(Duration::from_millis(1200)).await;
        alive.renew(&[]).await.unwrap();
        assert_eq!(
            alive.connection_opened(1, "u", at).await.unwrap(),
            1,
            "r1's count is gone"
        );
        assert!(!alive.sign_off(1, "u").await.unwrap());
    }
}
