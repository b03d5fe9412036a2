//! Who is online and where: each user's IP and P2P port under a renewable lease.
//!
//! Login, the heartbeat and open WebSockets renew the lease; a client that vanishes
//! is offline once its lease runs out. WebSocket connections are also counted per
//! token, so that presence notices are per user and logout of one device leaves the
//! user online while another device is connected.
//!
//! Implementations: in process (`backends::memory`) and Redis (`backends::redis`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Endpoint, UserId};

#[cfg(test)]
pub mod contract;

/// An online user: where it is, and when it was last seen (the same instant the
/// store records as its `last_seen`, so the online panel needs no store read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub at: Endpoint,
    pub seen: DateTime<Utc>,
}

/// Changes whenever a user's contact list may have changed, on every replica
/// alike: a cached list is good while the version it was read under is current.
pub type ContactsVersion = u64;

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
    async fn announce(&self, user: UserId, at: Endpoint, seen: DateTime<Utc>)
    -> PresenceResult<()>;

    /// A WebSocket of `user` opened under token `jti`: renews the lease, records
    /// `fallback` when no live address is known, and returns how many connections
    /// the user now holds on all replicas.
    async fn connection_opened(
        &self,
        user: UserId,
        jti: &str,
        fallback: Endpoint,
        seen: DateTime<Utc>,
    ) -> PresenceResult<u32>;

    /// The reverse of `connection_opened`; returns the connections left. The lease
    /// is left to run out by itself.
    async fn connection_closed(
        &self,
        user: UserId,
        jti: &str,
        seen: DateTime<Utc>,
    ) -> PresenceResult<u32>;

    /// Renews the leases of users holding WebSockets on this replica, and restores
    /// what a backend may have lost (a restarted Redis) from `held`.
    async fn renew(&self, held: &[Held]) -> PresenceResult<()>;

    /// Logout of token `jti`: the user goes offline unless a WebSocket opened with
    /// another token is still open. Returns whether the user is still online.
    /// `None`: logout of every token; the user goes offline at once (its
    /// WebSockets are closing).
    async fn sign_off(
        &self,
        user: UserId,
        jti: Option<&str>,
        seen: DateTime<Utc>,
    ) -> PresenceResult<bool>;

    /// How many users are online, for the gauge.
    async fn count_online(&self) -> PresenceResult<u64>;

    /// Where each user is (`None`: offline), in input order, in one round trip.
    async fn locate(&self, users: &[UserId]) -> PresenceResult<Vec<Option<Sighting>>>;

    /// The contact lists of `users` changed: versions cached anywhere are stale.
    async fn contacts_changed(&self, users: &[UserId]) -> PresenceResult<()>;

    /// [`Presence::locate`] of `contacts`, with the current version of `viewer`'s
    /// contact list, in one round trip.
    async fn locate_contacts(
        &self,
        viewer: UserId,
        contacts: &[UserId],
    ) -> PresenceResult<(ContactsVersion, Vec<Option<Sighting>>)>;
}
