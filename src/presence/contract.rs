//! Behaviour every presence backend must show: each backend's tests run
//! every function here on a fresh instance.
use std::time::Duration;

use super::*;
use crate::domain::{Endpoint, UserId};

fn at(port: u16) -> Endpoint {
    Endpoint {
        ip: "10.0.0.1".parse().unwrap(),
        port,
    }
}

/// An instant `secs` into a fixed day, to the millisecond.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_750_000_000_000 + secs * 1000 + 123).unwrap()
}

/// Where each user is, the time it was seen left out.
async fn places(p: &dyn Presence, users: &[UserId]) -> Vec<Option<Endpoint>> {
    let found = p.locate(users).await.unwrap();
    found.into_iter().map(|s| s.map(|s| s.at)).collect()
}

async fn seen(p: &dyn Presence, user: UserId) -> Option<DateTime<Utc>> {
    p.locate(&[user]).await.unwrap()[0].map(|s| s.seen)
}

pub async fn announce_and_locate(p: &dyn Presence) {
    assert_eq!(places(p, &[1, 2]).await, vec![None, None]);
    assert_eq!(p.count_online().await.unwrap(), 0);
    p.announce(1, at(4000), t(0)).await.unwrap();
    assert_eq!(p.count_online().await.unwrap(), 1);
    assert_eq!(
        p.locate(&[2, 1]).await.unwrap(),
        vec![
            None,
            Some(Sighting {
                at: at(4000),
                seen: t(0)
            })
        ]
    );
    p.announce(1, at(4001), t(1)).await.unwrap();
    assert_eq!(places(p, &[1]).await, vec![Some(at(4001))]);
    assert_eq!(seen(p, 1).await, Some(t(1)));
}

pub async fn connections_keep_known_address(p: &dyn Presence) {
    p.announce(1, at(5000), t(0)).await.unwrap();
    assert_eq!(p.connection_opened(1, "t1", at(9), t(1)).await.unwrap(), 1);
    assert_eq!(p.connection_opened(1, "t2", at(9), t(2)).await.unwrap(), 2);
    assert_eq!(places(p, &[1]).await, vec![Some(at(5000))]);
    assert_eq!(seen(p, 1).await, Some(t(2)));
    // A user with no address yet gets the WebSocket's.
    assert_eq!(p.connection_opened(2, "t3", at(7), t(3)).await.unwrap(), 1);
    assert_eq!(places(p, &[2]).await, vec![Some(at(7))]);
    assert_eq!(seen(p, 2).await, Some(t(3)));
    assert_eq!(p.connection_closed(1, "t1", t(4)).await.unwrap(), 1);
    assert_eq!(p.connection_closed(1, "t2", t(5)).await.unwrap(), 0);
    // Closing does not end the lease, and counts as being seen.
    assert_eq!(places(p, &[1]).await, vec![Some(at(5000))]);
    assert_eq!(seen(p, 1).await, Some(t(5)));
}

pub async fn sign_off_respects_other_devices(p: &dyn Presence) {
    p.announce(1, at(1), t(0)).await.unwrap();
    p.connection_opened(1, "phone", at(1), t(0)).await.unwrap();
    p.connection_opened(1, "laptop", at(1), t(0)).await.unwrap();
    assert!(
        p.sign_off(1, Some("laptop"), t(1)).await.unwrap(),
        "phone still connected"
    );
    assert_eq!(seen(p, 1).await, Some(t(1)));
    p.connection_closed(1, "phone", t(2)).await.unwrap();
    assert!(!p.sign_off(1, Some("laptop"), t(3)).await.unwrap());
    assert_eq!(places(p, &[1]).await, vec![None]);
    assert_eq!(p.count_online().await.unwrap(), 0);
    // Everywhere: offline at once, whatever is still connected.
    p.announce(1, at(1), t(4)).await.unwrap();
    p.connection_opened(1, "phone", at(1), t(4)).await.unwrap();
    assert!(!p.sign_off(1, None, t(5)).await.unwrap());
    assert_eq!(places(p, &[1]).await, vec![None]);
}

/// `p` must have been built with a one-second lease.
pub async fn lease_runs_out_unless_renewed(p: &dyn Presence) {
    p.announce(1, at(1), t(0)).await.unwrap();
    p.connection_opened(2, "t", at(2), t(0)).await.unwrap();
    let held = [Held {
        user: 2,
        jti: "t".into(),
        connections: 1,
        at: at(2),
    }];
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.renew(&held).await.unwrap();
    }
    assert_eq!(places(p, &[1, 2]).await, vec![None, Some(at(2))]);
    assert_eq!(p.count_online().await.unwrap(), 1);
    assert_eq!(seen(p, 2).await, Some(t(0)), "renewal is not activity");
}

/// What a replica holds comes back after the backend forgot everything.
pub async fn renew_restores_what_was_lost(fresh: &dyn Presence) {
    let held = [Held {
        user: 3,
        jti: "t".into(),
        connections: 2,
        at: at(3),
    }];
    let before = Utc::now() - chrono::Duration::milliseconds(1);
    fresh.renew(&held).await.unwrap();
    assert_eq!(places(fresh, &[3]).await, vec![Some(at(3))]);
    assert!(
        seen(fresh, 3).await.unwrap() >= before,
        "seen when restored"
    );
    assert_eq!(fresh.connection_closed(3, "t", t(1)).await.unwrap(), 1);
}

/// A contact list's version changes with every change of that list only.
pub async fn contact_versions_follow_changes(p: &dyn Presence) {
    p.contacts_changed(&[]).await.unwrap();
    p.announce(2, at(2), t(0)).await.unwrap();
    let (v1, found) = p.locate_contacts(1, &[2, 3]).await.unwrap();
    assert_eq!(
        found
            .into_iter()
            .map(|s| s.map(|s| s.at))
            .collect::<Vec<_>>(),
        vec![Some(at(2)), None]
    );
    assert_eq!(p.locate_contacts(1, &[]).await.unwrap().0, v1, "stable");
    let (w1, _) = p.locate_contacts(4, &[]).await.unwrap();
    p.contacts_changed(&[1, 5]).await.unwrap();
    let (v2, _) = p.locate_contacts(1, &[]).await.unwrap();
    assert_ne!(v2, v1);
    assert_eq!(
        p.locate_contacts(4, &[]).await.unwrap().0,
        w1,
        "others untouched"
    );
    p.contacts_changed(&[1]).await.unwrap();
    let (v3, _) = p.locate_contacts(1, &[]).await.unwrap();
    assert!(v3 != v2 && v3 != v1);
}
