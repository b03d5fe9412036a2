//! Who is online and where: each user's IP and P2P port under a renewable lease.
//!
//! Login, the heartbeat and open WebSockets renew the lease; a client that vanishes
//! is offline once its lease runs out. WebSocket connections are also counted per
//! token, so that presence notices are per user and logout of one device leaves the
//! user online while another device is connected.

use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::UserId;

pub mod memory;
pub mod redis;

/// Where a client can be reached directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// WebSockets this replica holds for one user under one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub user: UserId,
    pub jti: String,
    pub connections: u32,
    /// Where the newest of them connected from.
    pub at: Endpoint,
}

#[derive(Debug, thiserror::Error)]
#[error("presence backend unavailable")]
pub struct PresenceError(#[source] pub anyhow::Error);

pub type PresenceResult<T> = Result<T, PresenceError>;

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn ping(&self) -> PresenceResult<()>;

    /// Login or heartbeat: records where the user is and renews its lease.
    async fn announce(&self, user: UserId, at: Endpoint) -> PresenceResult<()>;

    /// A WebSocket of `user` opened under token `jti`: renews the lease, records
    /// `fallback` when no live address is known, and returns how many connections
    /// the user now holds on all replicas.
    async fn connection_opened(
        &self,
        user: UserId,
        jti: &str,
        fallback: Endpoint,
    ) -> PresenceResult<u32>;

    /// The reverse of `connection_opened`; returns the connections left. The lease
    /// is left to run out by itself.
    async fn connection_closed(&self, user: UserId, jti: &str) -> PresenceResult<u32>;

    /// Renews the leases of users holding WebSockets on this replica, and restores
    /// what a backend may have lost (a restarted Redis) from `held`.
    async fn renew(&self, held: &[Held]) -> PresenceResult<()>;

    /// Logout of token `jti`: the user goes offline unless a WebSocket opened with
    /// another token is still open. Returns whether the user is still online.
    async fn sign_off(&self, user: UserId, jti: &str) -> PresenceResult<bool>;

    /// How many users are online, for the gauge.
    async fn count_online(&self) -> PresenceResult<u64>;

    /// Where each user is (`None`: offline), in input order, in one round trip.
    async fn locate(&self, users: &[UserId]) -> PresenceResult<Vec<Option<Endpoint>>>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every presence backend must show.
    use std::time::Duration;

    use super::*;

    fn at(port: u16) -> Endpoint {
        Endpoint {
            ip: "10.0.0.1".parse().unwrap(),
            port,
        }
    }

    pub async fn announce_and_locate(p: &dyn Presence) {
        assert_eq!(p.locate(&[1, 2]).await.unwrap(), vec![None, None]);
        assert_eq!(p.count_online().await.unwrap(), 0);
        p.announce(1, at(4000)).await.unwrap();
        assert_eq!(p.count_online().await.unwrap(), 1);
        assert_eq!(p.locate(&[2, 1]).await.unwrap(), vec![None, Some(at(4000))]);
        p.announce(1, at(4001)).await.unwrap();
        assert_eq!(p.locate(&[1]).await.unwrap(), vec![Some(at(4001))]);
    }

    pub async fn connections_keep_known_address(p: &dyn Presence) {
        p.announce(1, at(5000)).await.unwrap();
        assert_eq!(p.connection_opened(1, "t1", at(9)).await.unwrap(), 1);
        assert_eq!(p.connection_opened(1, "t2", at(9)).await.unwrap(), 2);
        assert_eq!(p.locate(&[1]).await.unwrap(), vec![Some(at(5000))]);
        // A user with no address yet gets the WebSocket's.
        assert_eq!(p.connection_opened(2, "t3", at(7)).await.unwrap(), 1);
        assert_eq!(p.locate(&[2]).await.unwrap(), vec![Some(at(7))]);
        assert_eq!(p.connection_closed(1, "t1").await.unwrap(), 1);
        assert_eq!(p.connection_closed(1, "t2").await.unwrap(), 0);
        // Closing does not end the lease.
        assert!(p.locate(&[1]).await.unwrap()[0].is_some());
    }

    pub async fn sign_off_respects_other_devices(p: &dyn Presence) {
        p.announce(1, at(1)).await.unwrap();
        p.connection_opened(1, "phone", at(1)).await.unwrap();
        p.connection_opened(1, "laptop", at(1)).await.unwrap();
        assert!(
            p.sign_off(1, "laptop").await.unwrap(),
            "phone still connected"
        );
        p.connection_closed(1, "phone").await.unwrap();
        assert!(!p.sign_off(1, "laptop").await.unwrap());
        assert_eq!(p.locate(&[1]).await.unwrap(), vec![None]);
        assert_eq!(p.count_online().await.unwrap(), 0);
    }

    /// `p` must have been built with a one-second lease.
    pub async fn lease_runs_out_unless_renewed(p: &dyn Presence) {
        p.announce(1, at(1)).await.unwrap();
        p.connection_opened(2, "t", at(2)).await.unwrap();
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
        assert_eq!(p.locate(&[1, 2]).await.unwrap(), vec![None, Some(at(2))]);
    }

    /// What a replica holds comes back after the backend forgot everything.
    pub async fn renew_restores_what_was_lost(fresh: &dyn Presence) {
        let held = [Held {
            user: 3,
            jti: "t".into(),
            connections: 2,
            at: at(3),
        }];
        fresh.renew(&held).await.unwrap();
        assert_eq!(fresh.locate(&[3]).await.unwrap(), vec![Some(at(3))]);
        assert_eq!(fresh.connection_closed(3, "t").await.unwrap(), 1);
    }
}
