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
    sync::{Arc, LazyLock},
    time::Duration,
};

use super::script::Script;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Keyspace, RedisCommands, now_ms, with_redis};
use crate::{
    domain::{Endpoint, UserId},
    presence::{ContactsVersion, Held, Presence, PresenceError, PresenceResult, Sighting},
};

/// Lua shared by the scripts (`lua/common.lua`): the live `{field, count}`
/// pairs of a connections hash, dropping those of replicas that are no longer
/// alive, and reading and writing sightings.
/// A presence script, after the helpers it shares with the others.
fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/common.lua")))
}

static OPEN: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/open.lua")));
static CLOSE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/close.lua")));
static SIGN_OFF: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/sign_off.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/renew.lua")));

pub struct RedisPresence {
    redis: Arc<RedisCommands>,
    keys: Keyspace,
    lease: Duration,
    /// This replica's name in connection fields.
    replica: String,
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
        F: FnOnce(super::RedisConnection) -> Fut,
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

    async fn sign_off(
        &self,
        user: UserId,
        jti: Option<&str>,
        seen: DateTime<Utc>,
    ) -> PresenceResult<bool> {
        let mut call = SIGN_OFF.prepare_invoke();
        call.key(self.keys.sightings())
            .key(self.keys.connections(user))
            .key(self.keys.replicas())
            .key(self.keys.online())
            .arg(jti.unwrap_or_default())
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
        if users.is_empty() {
            return Ok(()); // HSET needs a field
        }
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

#[cfg(test)]
mod tests {
    //! The presence contract against a real Redis, each test under its own key prefix.
    use super::*;
    use crate::{backends::redis::testing, presence::contract};

    async fn presence(lease: Duration) -> RedisPresence {
        let (redis, keys) = testing::commands();
        RedisPresence::connect(redis, keys, lease, "r1".into())
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
        assert!(!alive.sign_off(1, Some("u"), Utc::now()).await.unwrap());
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
