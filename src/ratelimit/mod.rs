//! Rate limits and login lock-outs: the trait.
//!
//! Implementations: in this process (`backends::memory`, with `governor`), in
//! Redis (`backends::redis`, one script call per check, so that replicas share
//! one budget), and none at all (`RATE_LIMITS=off`).

use std::time::Duration;

use async_trait::async_trait;

use crate::{config::Settings, domain::Rate};

#[cfg(test)]
pub mod contract;

/// A budget the server keeps per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Login attempts, per client address.
    LoginPerIp = 0,
    /// Registrations, per client address.
    RegisterPerIp = 1,
    /// User searches, per user.
    SearchPerUser = 2,
    /// Offline messages stored, per sender.
    OfflinePerSender = 3,
    /// Directed and broadcast WebSocket frames, per user.
    FramesPerUser = 4,
    /// Inbox fetches and acknowledgements over HTTP, per user.
    InboxPerUser = 5,
    /// Friend requests, acceptances and removals, per user.
    ContactsPerUser = 6,
    /// Heartbeats (`PUT /me/connection-info`), per user.
    HeartbeatPerUser = 7,
    /// TURN credentials handed out, per user.
    TurnPerUser = 8,
    /// Public-key changes, per user.
    KeyChangePerUser = 9,
    /// Broadcast fan-out, per user: a receiver times a KiB of text is one.
    BroadcastPerUser = 10,
    /// Token refreshes, per client address.
    RefreshPerIp = 11,
}

impl Limit {
    pub const ALL: [Limit; 12] = [
        Limit::LoginPerIp,
        Limit::RegisterPerIp,
        Limit::SearchPerUser,
        Limit::OfflinePerSender,
        Limit::FramesPerUser,
        Limit::InboxPerUser,
        Limit::ContactsPerUser,
        Limit::HeartbeatPerUser,
        Limit::TurnPerUser,
        Limit::KeyChangePerUser,
        Limit::BroadcastPerUser,
        Limit::RefreshPerIp,
    ];

    /// Whether events pass while the counters cannot be reached: messages
    /// and the inbox do (other bounds hold them, and offline delivery keeps
    /// working), the rest do not.
    pub fn fails_open(self) -> bool {
        matches!(
            self,
            Limit::OfflinePerSender
                | Limit::FramesPerUser
                | Limit::InboxPerUser
                | Limit::BroadcastPerUser
        )
    }

    /// The metric label and key segment.
    pub fn name(self) -> &'static str {
        match self {
            Limit::LoginPerIp => "login_per_ip",
            Limit::RegisterPerIp => "register_per_ip",
            Limit::SearchPerUser => "search_per_user",
            Limit::OfflinePerSender => "offline_per_sender",
            Limit::FramesPerUser => "ws_frames_per_user",
            Limit::InboxPerUser => "inbox_per_user",
            Limit::ContactsPerUser => "contacts_per_user",
            Limit::HeartbeatPerUser => "heartbeat_per_user",
            Limit::TurnPerUser => "turn_per_user",
            Limit::KeyChangePerUser => "key_change_per_user",
            Limit::BroadcastPerUser => "broadcast_per_user",
            Limit::RefreshPerIp => "refresh_per_ip",
        }
    }
}

/// The rate of every [`Limit`].
#[derive(Debug, Clone, Copy)]
pub struct Rates([Rate; Limit::ALL.len()]);

impl Rates {
    pub fn from_settings(s: &Settings) -> Self {
        Self([
            s.rates.login_rate_per_ip,
            s.rates.register_rate_per_ip,
            s.rates.search_rate_per_user,
            s.rates.offline_rate_per_sender,
            s.rates.ws_frame_rate_per_user,
            s.rates.inbox_rate_per_user,
            s.rates.contact_rate_per_user,
            s.rates.heartbeat_rate_per_user,
            s.rates.turn_rate_per_user,
            s.rates.key_change_rate_per_user,
            s.rates.broadcast_fanout_per_user,
            s.rates.refresh_rate_per_ip,
        ])
    }

    pub fn of(&self, limit: Limit) -> Rate {
        self.0[limit as usize]
    }

    /// Every limit at `rate` (the contract tests).
    #[cfg(test)]
    pub fn all(rate: Rate) -> Self {
        Self([rate; Limit::ALL.len()])
    }
}

/// How failed logins lock an account: after `free` failures in a row, each
/// failure locks it for `first`, doubled for every failure since, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub free: u32,
    pub first: Duration,
    pub max: Duration,
}

impl LockoutPolicy {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            free: s.rates.login_free_failures,
            first: Duration::from_secs(s.rates.login_lockout_secs),
            max: Duration::from_secs(s.rates.login_lockout_max_secs),
        }
    }

    /// The lock-out that the `failures`-th failure in a row starts.
    pub fn lock_after(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.free.max(1))?;
        let doubled = self.first.saturating_mul(1u32 << beyond.min(31));
        Some(doubled.min(self.max))
    }

    /// How long a run of failures is remembered after the last one.
    pub fn memory(&self) -> Duration {
        self.max.saturating_mul(2).max(Duration::from_secs(3600))
    }
}

/// What a [`Limiter::take`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Events allowed, at most as many as asked for.
    pub granted: u32,
    /// When fewer were granted than asked for: how long until one more is.
    pub retry_after: Duration,
}

impl Grant {
    pub fn all(n: u32) -> Self {
        Self {
            granted: n,
            retry_after: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("rate-limit backend unavailable")]
pub struct LimiterError(#[source] pub anyhow::Error);

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Spends up to `n` events of `key`'s budget under `limit`: as many as the
    /// budget holds, the rest refused (and not spent).
    async fn take(&self, limit: Limit, key: &str, n: u32) -> Result<Grant, LimiterError>;

    /// [`Limiter::take`] without waiting, for a limiter that answers from
    /// this process: `None` means "ask `take`". Per-frame checks use it, so
    /// that the embedded relay pays no boxed future for them.
    fn take_now(&self, _limit: Limit, _key: &str, _n: u32) -> Option<Grant> {
        None
    }

    /// How long logins to `account` are still refused.
    async fn locked_for(&self, account: &str) -> Result<Option<Duration>, LimiterError>;

    /// Counts a failed login to `account`; returns the lock-out it starts.
    async fn login_failed(&self, account: &str) -> Result<Option<Duration>, LimiterError>;

    /// A successful login: `account`'s failures are forgotten.
    async fn login_succeeded(&self, account: &str) -> Result<(), LimiterError>;
}

/// `RATE_LIMITS=off`: everything is allowed.
pub struct Unlimited;

#[async_trait]
impl Limiter for Unlimited {
    async fn take(&self, _: Limit, _: &str, n: u32) -> Result<Grant, LimiterError> {
        Ok(Grant::all(n))
    }
    fn take_now(&self, _: Limit, _: &str, n: u32) -> Option<Grant> {
        Some(Grant::all(n))
    }
    async fn locked_for(&self, _: &str) -> Result<Option<Duration>, LimiterError> {
        Ok(None)
    }
    async fn login_failed(&self, _: &str) -> Result<Option<Duration>, LimiterError> {
        Ok(None)
    }
    async fn login_succeeded(&self, _: &str) -> Result<(), LimiterError> {
        Ok(())
    }
}

/// A budget kept in this process only, such as one connection's (which no
/// other replica can see anyway).
pub struct LocalBudget(governor::DefaultDirectRateLimiter);

impl LocalBudget {
    pub fn new(rate: Rate) -> Self {
        Self(governor::RateLimiter::direct(quota(rate)))
    }

    /// Spends up to `n` events, as [`Limiter::take`] does.
    pub fn take(&self, n: u32) -> Grant {
        let clock = self.0.clock();
        take_some(
            n,
            |n| matches!(self.0.check_n(n), Ok(Ok(()))),
            || {
                self.0.check().map_err(|not_until| {
                    not_until.wait_time_from(governor::clock::Clock::now(clock))
                })
            },
        )
    }
}

/// `rate` as a governor quota: the whole count at once, then one per interval.
pub fn quota(rate: Rate) -> governor::Quota {
    governor::Quota::with_period(rate.interval().max(std::time::Duration::from_nanos(1)))
        .expect("a non-zero interval")
        .allow_burst(rate.count)
}

/// Spends up to `n` events from a governor budget: all at once if it holds
/// them (`all`), else one at a time (`one`, which says how long until the
/// next on refusal), so that a batch gets what the budget still holds.
pub fn take_some(
    n: u32,
    all: impl FnOnce(std::num::NonZeroU32) -> bool,
    mut one: impl FnMut() -> Result<(), Duration>,
) -> Grant {
    let Some(nonzero) = std::num::NonZeroU32::new(n) else {
        return Grant::all(0);
    };
    if all(nonzero) {
        return Grant::all(n);
    }
    let mut granted = 0;
    while granted < n {
        match one() {
            Ok(()) => granted += 1,
            Err(wait) => {
                return Grant {
                    granted,
                    retry_after: wait.max(Duration::from_millis(1)),
                };
            }
        }
    }
    Grant::all(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_double_from_the_first_locking_failure_up_to_the_maximum() {
        let policy = LockoutPolicy {
            free: 3,
            first: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let locks: Vec<_> = (1..=9)
            .map(|n| policy.lock_after(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            locks,
            [
                None,
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(10),
                Some(10),
                Some(10)
            ]
        );
        assert_eq!(policy.lock_after(u32::MAX), Some(Duration::from_secs(10)));
    }
}
