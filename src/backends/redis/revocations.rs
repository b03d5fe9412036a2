//! Revoked tokens in Redis: one key per token, expiring shortly after the token.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Keyspace, RedisCommands, now_ms, with_redis};
use crate::revocation::{RevocationError, Revocations};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backends::redis::testing, revocation::contract};

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        let (redis, keys) = testing::commands();
        contract::revoked_until_expiry(&RedisRevocations::new(redis, keys)).await;
    }
}
