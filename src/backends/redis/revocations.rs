//! Revoked tokens in Redis: one key per token, expiring shortly after the
//! token; and each user's issued tokens, a sorted set by expiry.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use redis::Script;

use super::{Keyspace, RedisCommands, now_ms, with_redis};
use crate::{
    domain::UserId,
    revocation::{RevocationError, Revocations},
};

static ISSUED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/issued.lua")));
static REVOKE_ALL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/revoke_all.lua")));

pub struct RedisRevocations {
    redis: Arc<RedisCommands>,
    keys: Keyspace,
}

impl RedisRevocations {
    pub fn new(redis: Arc<RedisCommands>, keys: Keyspace) -> Self {
        Self { redis, keys }
    }
}

#[async_trait]
impl Revocations for RedisRevocations {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), RevocationError> {
        let key = self.keys.revoked(jti);
        // Kept a little past expiry: the token verifier allows some clock leeway.
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
        .map_err(RevocationError)
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, RevocationError> {
        let key = self.keys.revoked(jti);
        with_redis(&self.redis, |mut c| async move {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
        .map_err(RevocationError)
    }

    async fn issued(
        &self,
        user: UserId,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), RevocationError> {
        let mut call = ISSUED.prepare_invoke();
        call.key(self.keys.tokens(user))
            .arg(jti)
            .arg(expires_at.timestamp_millis())
            .arg(now_ms());
        with_redis(&self.redis, |mut c| async move {
            call.invoke_async::<()>(&mut c).await
        })
        .await
        .map_err(RevocationError)
    }

    async fn revoke_all(&self, user: UserId, keep: Option<&str>) -> Result<(), RevocationError> {
        let mut call = REVOKE_ALL.prepare_invoke();
        call.key(self.keys.tokens(user))
            .arg(now_ms())
            .arg(keep.unwrap_or_default())
            .arg(self.keys.revoked_prefix());
        with_redis(&self.redis, |mut c| async move {
            call.invoke_async::<()>(&mut c).await
        })
        .await
        .map_err(RevocationError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backends::redis::testing, revocation::contract};

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        let (redis, keys) = testing::commands();
        let revocations = RedisRevocations::new(redis, keys);
        contract::revoked_until_expiry(&revocations).await;
        contract::all_of_a_users_tokens_can_be_revoked(&revocations).await;
    }
}
