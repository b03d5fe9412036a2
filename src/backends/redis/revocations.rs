//! Revoked tokens in Redis: one key per token, expiring shortly after the
//! token; and each user's issued tokens, a sorted set by expiry.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::script::Script;

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

    /// The command refusing `jti` until a little past its expiry: the token
    /// verifier allows some clock leeway.
    fn revoking(&self, jti: &str, expires_ms: i64, now_ms: i64) -> redis::Cmd {
        let ttl_ms = (expires_ms - now_ms).max(1000) + 10_000;
        let mut command = redis::cmd("SET");
        command
            .arg(self.keys.revoked(jti))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms);
        command
    }
}

#[async_trait]
impl Revocations for RedisRevocations {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), RevocationError> {
        let command = self.revoking(jti, expires_at.timestamp_millis(), now_ms());
        with_redis(&self.redis, |mut c| async move {
            command.query_async::<()>(&mut c).await
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

    /// Revokes first and forgets after: a failure between the two leaves the
    /// tokens listed, so that trying again revokes them again.
    async fn revoke_all(&self, user: UserId, keep: Option<&str>) -> Result<(), RevocationError> {
        let now = now_ms();
        let tokens_key = self.keys.tokens(user);
        let mut call = REVOKE_ALL.prepare_invoke();
        call.key(&tokens_key).arg(now).arg(keep.unwrap_or_default());
        let tokens: Vec<(String, i64)> = with_redis(&self.redis, |mut c| async move {
            call.invoke_async(&mut c).await
        })
        .await
        .map_err(RevocationError)?;
        if tokens.is_empty() {
            return Ok(());
        }
        let revoking: Vec<redis::Cmd> = tokens
            .iter()
            .map(|(jti, expires_ms)| self.revoking(jti, *expires_ms, now))
            .collect();
        let jtis: Vec<String> = tokens.into_iter().map(|(jti, _)| jti).collect();
        with_redis(&self.redis, |mut c| async move {
            c.each::<()>(&revoking).await?;
            redis::cmd("ZREM")
                .arg(&tokens_key)
                .arg(jtis)
                .query_async::<()>(&mut c)
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
        let revocations = RedisRevocations::new(redis, keys);
        contract::revoked_until_expiry(&revocations).await;
        contract::all_of_a_users_tokens_can_be_revoked(&revocations).await;
    }
}
