//! Rate limits and lock-outs in Redis, shared by every replica: one script
//! call per check (`lua/gcra.lua`, `lua/lockout.lua`), timed by Redis's clock
//! so that replicas' clocks need not agree.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use super::script::Script;
use async_trait::async_trait;

use super::{Keyspace, RedisCommands, with_redis};
use crate::ratelimit::{Grant, Limit, Limiter, LimiterError, LockoutPolicy, Rates};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));
static LOCKOUT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/lockout.lua")));

pub struct RedisLimiter {
    redis: Arc<RedisCommands>,
    keys: Keyspace,
    rates: Rates,
    policy: LockoutPolicy,
}

impl RedisLimiter {
    pub fn new(
        redis: Arc<RedisCommands>,
        keys: Keyspace,
        rates: Rates,
        policy: LockoutPolicy,
    ) -> Self {
        Self {
            redis,
            keys,
            rates,
            policy,
        }
    }

    async fn lockout(&self, account: &str, args: &[u64]) -> Result<Option<Duration>, LimiterError> {
        let mut call = LOCKOUT.key(self.keys.login_failures(account));
        call.arg(if args.is_empty() { "check" } else { "fail" });
        for arg in args {
            call.arg(*arg);
        }
        let ms: u64 = with_redis(&self.redis, |mut c| async move {
            call.invoke_async(&mut c).await
        })
        .await
        .map_err(LimiterError)?;
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn take(&self, limit: Limit, key: &str, n: u32) -> Result<Grant, LimiterError> {
        let rate = self.rates.of(limit);
        let interval_us = u64::try_from(rate.interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut call = GCRA.key(self.keys.rate_budget(limit.name(), key));
        call.arg(interval_us).arg(rate.count.get()).arg(n);
        let (granted, wait_us): (u32, u64) = with_redis(&self.redis, |mut c| async move {
            call.invoke_async(&mut c).await
        })
        .await
        .map_err(LimiterError)?;
        Ok(Grant {
            granted,
            retry_after: Duration::from_micros(wait_us),
        })
    }

    async fn locked_for(&self, account: &str) -> Result<Option<Duration>, LimiterError> {
        self.lockout(account, &[]).await
    }

    async fn login_failed(&self, account: &str) -> Result<Option<Duration>, LimiterError> {
        let p = self.policy;
        self.lockout(
            account,
            &[u64::from(p.free), ms(p.first), ms(p.max), ms(p.memory())],
        )
        .await
    }

    async fn login_succeeded(&self, account: &str) -> Result<(), LimiterError> {
        let key = self.keys.login_failures(account);
        with_redis(&self.redis, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await
        .map_err(LimiterError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backends::redis::testing, ratelimit::contract};

    fn limiter() -> RedisLimiter {
        let (redis, keys) = testing::commands();
        RedisLimiter::new(redis, keys, contract::rates(), contract::policy())
    }

    #[tokio::test]
    #[ignore = "needs Redis: run with --include-ignored (CI does)"]
    async fn contract_holds() {
        contract::a_burst_then_refusals_until_the_budget_refills(&limiter()).await;
        contract::part_of_a_batch_is_granted(&limiter()).await;
        contract::keys_and_limits_have_budgets_of_their_own(&limiter()).await;
        contract::failures_lock_out_longer_each_time_until_a_success(&limiter()).await;
    }
}
