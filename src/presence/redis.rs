//! Presence in Redis, shared by every replica.
//!
//! - `sightings`: hash `user -> "{ip} {port} {seen ms} {lease end ms}"`;
//! - `online`: sorted set of the same users scored by their lease end, to count
//!   and sweep them;
//! - `conns:{user}`: hash `"{replica}|{jti}" -> open WebSockets`, TTL the lease;
//! - `replicas`: sorted set of replicas scored by when their liveness lapses;
//! - `contact-versions`: hash `user -> version of its contact list`.
//!
//! One hash holds every user's address and lease, so that locating hundreds of
//! users is one `HMGET`, not a command per user. Lapsed entries
//! are swept by the replicas' renewals. Counts of a replica that stopped renewing
//! (it died) are ignored and dropped, so its users go offline within one lease.
//! Each multi-step change is one Lua script, atomic in Redis.

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

use super::{ContactsVersion, Endpoint, Held, Presence, PresenceError, PresenceResult, Sighting};
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
-- The user's sighting {addr = "{ip} {port}", seen = ms, until_ms = lease end},
-- or nil.
local function sighting(sightings, user)
  local v = redis.call('HGET', sightings, user)
  if not v then return nil end
  local addr, seen, until_ms = string.match(v, '^(%S+ %S+) (%S+) (%S+)$')
  return {addr = addr, seen = seen, until_ms = tonumber(until_ms)}
end
-- Records a sighting, and its lease in the online set.
local function put(sightings, online, user, addr, seen, until_ms)
  until_ms = string.format('%d', until_ms)
  redis.call('HSET', sightings, user, addr .. ' ' .. seen .. ' ' .. until_ms)
  redis.call('ZADD', online, until_ms, user)
end
-- Records that the user was seen, where it has a sighting.
local function seen(sightings, user, at_ms)
  local s = sighting(sightings, user)
  if s then
    redis.call('HSET', sightings, user, s.addr .. ' ' .. at_ms .. ' ' .. string.format('%d', s.until_ms))
  end
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LIVE_FIELDS}\n{body}"))
}

/// KEYS: sightings, conns, replicas, online. ARGV: lease ms, field, "ip port"
/// (used when no live address is known), seen ms, user.
static OPEN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local s = sighting(KEYS[1], ARGV[5])
local addr = (s and s.until_ms > now) and s.addr or ARGV[3]
put(KEYS[1], KEYS[4], ARGV[5], addr, ARGV[4], now + tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return total(live_fields(KEYS[2], KEYS[3]))
"#,
    )
});

/// KEYS: conns, replicas, sightings. ARGV: field, user, seen ms.
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
seen(KEYS[3], ARGV[2], ARGV[3])
return total(live_fields(KEYS[1], KEYS[2]))
"#,
    )
});

/// KEYS: sightings, conns, replicas, online. ARGV: jti, user, seen ms. Returns 1
/// when another token still holds a connection (the user stays online), else
/// ends the lease.
static SIGN_OFF: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
for _, f in ipairs(live_fields(KEYS[2], KEYS[3])) do
  local jti = string.sub(f[1], string.find(f[1], '|', 1, true) + 1)
  if jti ~= ARGV[1] then
    seen(KEYS[1], ARGV[2], ARGV[3])
    return 1
  end
end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 0
"#,
    )
});

/// KEYS: replicas, online, sightings, then conns per held entry. ARGV: replica,
/// lease ms, then (field, "ip port", count, user) per entry. Marks the replica
/// alive, renews (or, after Redis lost them, restores) what it holds, and sweeps
/// users whose lease lapsed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 4, #KEYS do
  local a = 3 + (i - 4) * 4
  local user = ARGV[a + 3]
  local s = sighting(KEYS[3], user)
  if s and s.until_ms > now then
    put(KEYS[3], KEYS[2], user, s.addr, s.seen, now + lease)
  else
    put(KEYS[3], KEYS[2], user, ARGV[a + 1], string.format('%d', now), now + lease)
  end
  redis.call('HSETNX', KEYS[i], ARGV[a], ARGV[a + 2])
  redis.call('PEXPIRE', KEYS[i], lease)
end
-- At most 10,000 a run, in slices Lua can unpack.
for _ = 1, 10 do
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  if #gone == 0 then break end
  redis.call('HDEL', KEYS[3], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
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

/// `"{ip} {port}"`, as the scripts keep it.
fn address(at: Endpoint) -> String {
    format!("{} {}", at.ip, at.port)
}

/// Reads a `sightings` value, `None` once its lease has lapsed.
fn parse_sighting(value: &str, now_ms: i64) -> Option<Sighting> {
    let mut parts = value.split(' ');
    let at = Endpoint {
        ip: parts.next()?.parse().ok()?,
        port: parts.next()?.parse().ok()?,
    };
    let seen = DateTime::from_timestamp_millis(parts.next()?.parse().ok()?)?;
    let until_ms: i64 = parts.next()?.parse().ok()?;
    (until_ms > now_ms).then_some(Sighting { at, seen })
}

impl RedisPresence {
    /// Adds to `pipe` the command locating `users`; [`located`] reads its answer.
    fn add_locate(&self, pipe: &mut redis::Pipeline, users: &[UserId]) {
        pipe.cmd("HMGET").arg(self.keys.sightings()).arg(users);
    }
}

fn located(sightings: Vec<Option<String>>) -> Vec<Option<Sighting>> {
    let now = now_ms();
    sightings
        .into_iter()
        .map(|value| parse_sighting(&value?, now))
        .collect()
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

    async fn announce(
        &self,
        user: UserId,
        at: Endpoint,
        seen: DateTime<Utc>,
    ) -> PresenceResult<()> {
        let (online, sightings) = (self.keys.online(), self.keys.sightings());
        let until = now_ms() + self.lease_ms() as i64;
        let value = format!("{} {} {until}", address(at), seen.timestamp_millis());
        self.run(|mut c| async move {
            redis::pipe()
                .atomic()
                .zadd(&online, user, until)
                .ignore()
                .hset(&sightings, user, value)
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
        seen: DateTime<Utc>,
    ) -> PresenceResult<u32> {
        let mut call = OPEN.prepare_invoke();
        call.key(self.keys.sightings())
            .key(self.keys.connections(user))
            .key(self.keys.replicas())
            .key(self.keys.online())
            .arg(self.lease_ms())
            .arg(self.field(jti))
            .arg(address(fallback))
            .arg(seen.timestamp_millis())
            .arg(user);
        self.run(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    async fn connection_closed(
        &self,
        user: UserId,
        jti: &str,
        seen: DateTime<Utc>,
    ) -> PresenceResult<u32> {
        let mut call = CLOSE.prepare_invoke();
        call.key(self.keys.connections(user))
            .key(self.keys.replicas())
            .key(self.keys.sightings())
            .arg(self.field(jti))
            .arg(user)
            .arg(seen.timestamp_millis());
        self.run(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    async fn renew(&self, held: &[Held]) -> PresenceResult<()> {
        let mut call = RENEW.prepare_invoke();
        call.key(self.keys.replicas())
            .key(self.keys.online())
            .key(self.keys.sightings())
            .arg(&self.replica)
            .arg(self.lease_ms());
        for h in held {
            call.key(self.keys.connections(h.user))
                .arg(self.field(&h.jti))
                .arg(address(h.at))
                .arg(h.connections)
                .arg(h.user);
        }
        self.run(|mut c| async move { call.invoke_async::<i64>(&mut c).await.map(drop) })
            .await
    }

    async fn sign_off(&self, user: UserId, jti: &str, seen: DateTime<Utc>) -> PresenceResult<bool> {
        let mut call = SIGN_OFF.prepare_invoke();
        call.key(self.keys.sightings())
            .key(self.keys.connections(user))
            .key(self.keys.replicas())
            .key(self.keys.online())
            .arg(jti)
            .arg(user)
            .arg(seen.timestamp_millis());
        let others: i64 = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(others == 1)
    }

    async fn count_online(&self) -> PresenceResult<u64> {
        let online = self.keys.online();
        let after = format!("({}", now_ms());
        self.run(|mut c| async move {
            redis::cmd("ZCOUNT")
                .arg(&online)
                .arg(after)
                .arg("+inf")
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn locate(&self, users: &[UserId]) -> PresenceResult<Vec<Option<Sighting>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        self.add_locate(&mut pipe, users);
        let (sightings,) = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(located(sightings))
    }

    async fn contacts_changed(&self, users: &[UserId]) -> PresenceResult<()> {
        // Random versions rather than counters: a Redis that lost its data and
        // counted up again could repeat a version some replica has cached.
        let versions: Vec<(UserId, u64)> = users
            .iter()
            .map(|u| (*u, uuid::Uuid::new_v4().as_u64_pair().0))
            .collect();
        let key = self.keys.contact_versions();
        self.run(|mut c| async move {
            redis::cmd("HSET")
                .arg(&key)
                .arg(versions)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn locate_contacts(
        &self,
        viewer: UserId,
        contacts: &[UserId],
    ) -> PresenceResult<(ContactsVersion, Vec<Option<Sighting>>)> {
        let mut pipe = redis::pipe();
        pipe.hget(self.keys.contact_versions(), viewer);
        if contacts.is_empty() {
            let (version,): (Option<u64>,) = self
                .run(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            return Ok((version.unwrap_or_default(), Vec::new()));
        }
        self.add_locate(&mut pipe, contacts);
        let (version, sightings): (Option<u64>, _) = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        Ok((version.unwrap_or_default(), located(sightings)))
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
        contract::contact_versions_follow_changes(&presence(minute).await).await;
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
        dead.connection_opened(1, "t", at, Utc::now())
            .await
            .unwrap();
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
            alive
                .connection_opened(1, "u", at, Utc::now())
                .await
                .unwrap(),
            1,
            "r1's count is gone"
        );
        assert!(!alive.sign_off(1, "u", Utc::now()).await.unwrap());
    }

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn renewals_sweep_lapsed_sightings() {
        let p = presence(Duration::from_millis(300)).await;
        let at = Endpoint {
            ip: "::1".parse().unwrap(),
            port: 9,
        };
        // More than one slice of the sweep.
        futures_util::future::try_join_all((1..=2500).map(|user| p.announce(user, at, Utc::now())))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        p.announce(2, at, Utc::now()).await.unwrap();
        p.renew(&[]).await.unwrap();
        let (sightings, online) = (p.keys.sightings(), p.keys.online());
        let left: (Vec<String>, Vec<String>) = with_redis(&p.redis, |mut c| async move {
            redis::pipe()
                .hkeys(&sightings)
                .zrange(&online, 0, -1)
                .query_async(&mut c)
                .await
        })
        .await
        .unwrap();
        assert_eq!(left, (vec!["2".to_owned()], vec!["2".to_owned()]));
        assert_eq!(p.count_online().await.unwrap(), 1);
    }
}
