//! Rate limits and lock-outs in this process (the embedded default), with
//! `governor`'s keyed GCRA limiters and a bounded cache of failure runs.

use std::{
    hash::BuildHasher,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, clock::Clock};

use crate::ratelimit::{
    Grant, Limit, Limiter, LimiterError, LockoutPolicy, Rates, quota, take_some,
};

/// Accounts whose failure runs are remembered at most; the oldest go first.
const LOCKOUT_CAPACITY: u64 = 100_000;

/// How often budgets that have refilled completely are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub struct MemoryLimiter {
    /// Keyed by a hash of the key, so that a check allocates nothing; the
    /// hasher is keyed at random per process, so no client can pick keys
    /// that collide with another's (and 64 bits leave chance collisions
    /// negligible).
    budgets: Vec<DefaultKeyedRateLimiter<u64>>,
    hasher: std::collections::hash_map::RandomState,
    failures: moka::sync::Cache<String, FailureRun>,
    policy: LockoutPolicy,
}

#[derive(Debug, Clone, Copy)]
struct FailureRun {
    count: u32,
    locked_until: Option<Instant>,
}

impl MemoryLimiter {
    /// A limiter with these rates; a background task forgets full budgets
    /// while it lives.
    pub fn new(rates: Rates, policy: LockoutPolicy) -> Arc<Self> {
        let limiter = Arc::new(Self {
            budgets: Limit::ALL
                .iter()
                .map(|&limit| governor::RateLimiter::keyed(quota(rates.of(limit))))
                .collect(),
            hasher: Default::default(),
            failures: moka::sync::Cache::builder()
                .max_capacity(LOCKOUT_CAPACITY)
                .time_to_idle(policy.memory())
                .build(),
            policy,
        });
        tokio::spawn(sweep(Arc::downgrade(&limiter)));
        limiter
    }
}

impl MemoryLimiter {
    fn take_here(&self, limit: Limit, key: &str, n: u32) -> Grant {
        let budget = &self.budgets[limit as usize];
        let key = self.hasher.hash_one(key);
        take_some(
            n,
            |n| matches!(budget.check_key_n(&key, n), Ok(Ok(()))),
            || {
                budget
                    .check_key(&key)
                    .map_err(|not_until| not_until.wait_time_from(budget.clock().now()))
            },
        )
    }
}

async fn sweep(limiter: Weak<MemoryLimiter>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        for budget in &limiter.budgets {
            budget.retain_recent();
            budget.shrink_to_fit();
        }
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn take(&self, limit: Limit, key: &str, n: u32) -> Result<Grant, LimiterError> {
        Ok(self.take_here(limit, key, n))
    }

    fn take_now(&self, limit: Limit, key: &str, n: u32) -> Option<Grant> {
        Some(self.take_here(limit, key, n))
    }

    async fn locked_for(&self, account: &str) -> Result<Option<Duration>, LimiterError> {
        let now = Instant::now();
        Ok(self
            .failures
            .get(account)
            .and_then(|run| run.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now))
    }

    async fn login_failed(&self, account: &str) -> Result<Option<Duration>, LimiterError> {
        let policy = self.policy;
        let run = self
            .failures
            .entry(account.to_owned())
            .and_upsert_with(|previous| {
                let count = previous.map_or(0, |e| e.value().count).saturating_add(1);
                FailureRun {
                    count,
                    locked_until: policy.lock_after(count).map(|lock| Instant::now() + lock),
                }
            })
            .into_value();
        Ok(policy.lock_after(run.count))
    }

    async fn login_succeeded(&self, account: &str) -> Result<(), LimiterError> {
        self.failures.invalidate(account);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::contract;

    fn limiter() -> Arc<MemoryLimiter> {
        MemoryLimiter::new(contract::rates(), contract::policy())
    }

    #[tokio::test]
    async fn contract_holds() {
        contract::a_burst_then_refusals_until_the_budget_refills(&*limiter()).await;
        contract::part_of_a_batch_is_granted(&*limiter()).await;
        contract::keys_and_limits_have_budgets_of_their_own(&*limiter()).await;
        contract::failures_lock_out_longer_each_time_until_a_success(&*limiter()).await;
    }
}
