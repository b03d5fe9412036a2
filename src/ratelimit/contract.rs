//! Behaviour every limiter must show. Each implementation is built with
//! [`rates`] and [`policy`] before these run.

use std::time::Duration;

use super::{Grant, Limit, Limiter, LockoutPolicy, Rates};
use crate::domain::Rate;

/// Three events at once, then one every 200 ms.
pub fn rates() -> Rates {
    Rates::all(Rate::new(3, Duration::from_millis(600)).unwrap())
}

pub fn policy() -> LockoutPolicy {
    LockoutPolicy {
        free: 2,
        first: Duration::from_millis(300),
        max: Duration::from_millis(600),
    }
}

pub async fn a_burst_then_refusals_until_the_budget_refills(l: &dyn Limiter) {
    let key = "burst";
    for _ in 0..3 {
        assert_eq!(
            l.take(Limit::SearchPerUser, key, 1).await.unwrap(),
            Grant::all(1)
        );
    }
    let refused = l.take(Limit::SearchPerUser, key, 1).await.unwrap();
    assert_eq!(refused.granted, 0);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(200),
        "{refused:?}"
    );
    // Refused events are not spent: after the wait, one more goes through.
    tokio::time::sleep(refused.retry_after + Duration::from_millis(30)).await;
    assert_eq!(
        l.take(Limit::SearchPerUser, key, 1).await.unwrap().granted,
        1
    );
    assert_eq!(
        l.take(Limit::SearchPerUser, key, 1).await.unwrap().granted,
        0
    );
}

pub async fn part_of_a_batch_is_granted(l: &dyn Limiter) {
    let got = l.take(Limit::FramesPerUser, "batch", 5).await.unwrap();
    assert_eq!(got.granted, 3);
    assert!(got.retry_after > Duration::ZERO, "{got:?}");
    assert_eq!(
        l.take(Limit::FramesPerUser, "batch", 2)
            .await
            .unwrap()
            .granted,
        0
    );
}

pub async fn keys_and_limits_have_budgets_of_their_own(l: &dyn Limiter) {
    assert_eq!(
        l.take(Limit::LoginPerIp, "one", 3).await.unwrap().granted,
        3
    );
    assert_eq!(
        l.take(Limit::LoginPerIp, "one", 1).await.unwrap().granted,
        0
    );
    assert_eq!(
        l.take(Limit::LoginPerIp, "two", 3).await.unwrap().granted,
        3
    );
    assert_eq!(
        l.take(Limit::RegisterPerIp, "one", 3)
            .await
            .unwrap()
            .granted,
        3
    );
}

pub async fn failures_lock_out_longer_each_time_until_a_success(l: &dyn Limiter) {
    let (account, other) = ("alice", "bob");
    let policy = policy();
    assert_eq!(l.locked_for(account).await.unwrap(), None);
    assert_eq!(
        l.login_failed(account).await.unwrap(),
        None,
        "the first is free"
    );
    assert_eq!(l.locked_for(account).await.unwrap(), None);
    let first = l.login_failed(account).await.unwrap();
    assert_eq!(first, policy.lock_after(2));
    let remaining = l.locked_for(account).await.unwrap().expect("locked");
    assert!(
        remaining <= policy.first && remaining > Duration::ZERO,
        "{remaining:?}"
    );
    assert_eq!(
        l.locked_for(other).await.unwrap(),
        None,
        "only that account"
    );
    tokio::time::sleep(remaining + Duration::from_millis(30)).await;
    assert_eq!(
        l.locked_for(account).await.unwrap(),
        None,
        "the lock lapses"
    );
    assert_eq!(l.login_failed(account).await.unwrap(), policy.lock_after(3));
    assert_eq!(
        policy.lock_after(3),
        Some(Duration::from_millis(600)),
        "doubled"
    );
    l.login_succeeded(account).await.unwrap();
    assert_eq!(
        l.locked_for(account).await.unwrap(),
        None,
        "a success unlocks"
    );
    assert_eq!(
        l.login_failed(account).await.unwrap(),
        None,
        "and the count starts again"
    );
}
