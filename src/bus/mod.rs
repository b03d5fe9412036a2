//! Fan-out: carries WebSocket events to every replica that holds an addressee.
//!
//! Each replica keeps its own connections in a local hub (`service::hub`); the
//! bus only decides which replicas see an event. In process (`backends::memory`)
//! there is one replica, so events go straight to its hub; with Redis
//! (`backends::redis`) they travel by pub/sub.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    domain::{DirectMessage, UserId},
    metrics::EventKind,
};

#[cfg(test)]
pub mod contract;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// Every connected user but one (the sender, or the subject of a notice).
    AllExcept(UserId),
    Users(Vec<UserId>),
}

/// Travels between replicas (the Redis bus's envelope). Its binary form is
/// positional, without names: a change to this type, [`Audience`],
/// [`Sessions`] or [`DirectMessage`] needs a new envelope version, read
/// beside the old one, so that replicas of different releases keep reading
/// each other during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// To every connection of the recipient. Shared, so that keeping it for the
    /// offline fallback copies nothing.
    Direct(Arc<DirectMessage>),
    /// A text frame (a broadcast or a presence notice), written as is.
    Text { text: String, audience: Audience },
    /// Close some of the user's WebSockets: their tokens were revoked.
    CloseSessions { user: UserId, sessions: Sessions },
    /// To the sender's connections: its recipient acknowledged these
    /// messages (they asked for receipts).
    Delivered { sender: UserId, ids: Vec<i64> },
    /// To the user's connections: messages were stored for it while it may
    /// have been connected; each connection fetches what waits.
    Unread { user: UserId },
}

/// Which of a user's WebSockets, by the token each was authenticated with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sessions {
    /// Those of this token (logout).
    Of(String),
    /// All but those of this token (password change), or all of them.
    AllBut(Option<String>),
}

impl Sessions {
    pub fn include(&self, jti: &str) -> bool {
        match self {
            Self::Of(of) => of == jti,
            Self::AllBut(kept) => kept.as_deref() != Some(jti),
        }
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Direct(_) => EventKind::Direct,
            Self::Text { .. } => EventKind::Text,
            Self::CloseSessions { .. } => EventKind::Close,
            Self::Delivered { .. } => EventKind::Delivered,
            Self::Unread { .. } => EventKind::Unread,
        }
    }
}

/// Where a replica's bus hands the events that reach it: the replica's hub.
pub trait EventSink: Send + Sync + 'static {
    /// Delivers to local connections; for a direct message, false when this replica
    /// holds no connection of the recipient.
    fn deliver(&self, event: Event) -> bool;

    /// A directed message that reached this replica for a user it no longer
    /// holds: to be stored offline.
    fn undeliverable(&self, message: Arc<DirectMessage>);

    /// Users with connections here.
    fn local_users(&self) -> Vec<UserId>;

    fn holds(&self, user: UserId) -> bool;

    /// This replica receives events again after it could not for a while:
    /// what was stored for its users meanwhile waits for them.
    fn resumed(&self);
}

/// What became of a queued event ([`Bus::queue`]).
pub type Answer = futures_util::future::BoxFuture<'static, Result<bool, BusError>>;

#[derive(Debug, thiserror::Error)]
#[error("fan-out backend unavailable")]
pub struct BusError(#[source] pub anyhow::Error);

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fails while this replica cannot receive events (no subscription).
    async fn ping(&self) -> Result<(), BusError>;

    /// Hands `event` to every replica holding one of its addressees. For a direct
    /// message, answers false when no replica holds a connection of the recipient.
    async fn publish(&self, event: Event) -> Result<bool, BusError> {
        self.queue(event).await.await
    }

    /// Publishes like [`Bus::publish`], but returns once the event has its
    /// place, with its answer to await apart: events queued one after another
    /// go out in that order, so a connection's next message can join the
    /// same round trip instead of waiting for this one's answer.
    async fn queue(&self, event: Event) -> Answer;

    /// This replica now holds connections of `user` (its first one opened).
    async fn attach(&self, user: UserId) -> Result<(), BusError>;

    /// This replica no longer holds connections of `user`.
    async fn detach(&self, user: UserId) -> Result<(), BusError>;
}
