//! The service layer: every flow that touches more than one backend lives
//! here, so that the HTTP handlers and the WebSocket session only translate
//! between their protocol and these calls.
//!
//! - `accounts`: register, log in and out, authenticate, "seen now", search;
//! - `contacts`: friend requests and contact lists, with presence;
//! - `relay`: directed messages and broadcasts, connections opening and
//!   closing, presence notices, offline messages (inbox);
//! - `hub`: this replica's WebSocket connections, where fan-out delivers;
//! - `names`, `online`, `writer`: the caches and the batching they use.

use std::sync::Arc;

use crate::{
    auth::{
        jwt::Tokens,
        password::{HashError, PasswordHasher},
    },
    bus::{Bus, BusError},
    capabilities::Backends,
    client_ids::ClientIds,
    config::Settings,
    domain::Invalid,
    metrics,
    presence::{Presence, PresenceError},
    ratelimit::{Limiter, LimiterError},
    revocation::{RevocationError, Revocations},
    store::{MailboxQuota, Store, StoreError},
};

mod accounts;
mod consent;
mod contacts;
pub mod hub;
mod names;
mod online;
mod relay;
mod turn;
mod writer;

pub use accounts::{AuthUser, Login};
pub use contacts::ContactTarget;
pub use online::{Card, Online};
pub use relay::{FrameBudget, InboxPage, PUSH_CLAIM};
pub use turn::TurnCredentials;

use consent::ConsentCache;
use hub::Hub;
use names::NameCache;
use online::OnlineContacts;
use writer::{MessageWriter, ReadMarker};

/// Why a flow did not go through, in terms an edge can render.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is not who it claims to be.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// What the caller named does not exist, or may not be seen by it.
    #[error("{0}")]
    NotFound(&'static str),
    /// The request contradicts what is stored (a taken name, an existing contact).
    #[error("{0}")]
    Refused(&'static str),
    /// The caller holds, or asked for, as much as a limit allows; it may try
    /// again after the time given.
    #[error("{0}")]
    Limited(&'static str, std::time::Duration),
    /// Where the request would put something is full (a recipient's mailbox).
    #[error("{0}")]
    Full(&'static str),
    /// The server is too busy for this now; the client may retry shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// Fields that break the rules, all of them at once.
    #[error("invalid input")]
    Invalid(Vec<Invalid>),
    /// A backend is unreachable: the client may retry.
    #[error("a backend is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    pub const BAD_CREDENTIALS: Self = Self::Unauthenticated("Incorrect username or password");
    pub const BAD_TOKEN: Self = Self::Unauthenticated("Could not validate credentials");
    pub const MAILBOX_FULL: Self = Self::Full("Recipient's mailbox is full");
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        Self::Invalid(vec![invalid])
    }
}

impl From<HashError> for Error {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => Self::Busy("Server busy; try again in a moment"),
            HashError::Failed(e) => Self::Internal(e),
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(e) => Self::Unavailable(e),
            StoreError::NoSuchUser => Self::NotFound("User not found"),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<PresenceError> for Error {
    fn from(err: PresenceError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<BusError> for Error {
    fn from(err: BusError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<LimiterError> for Error {
    fn from(err: LimiterError) -> Self {
        Self::Unavailable(err.into())
    }
}

impl From<RevocationError> for Error {
    fn from(err: RevocationError) -> Self {
        Self::Unavailable(err.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The flows of one replica, over its backends and its hub.
pub struct Services {
    store: Arc<dyn Store>,
    revocations: Arc<dyn Revocations>,
    presence: Arc<dyn Presence>,
    bus: Arc<dyn Bus>,
    limiter: Arc<dyn Limiter>,
    /// Which message each sender's recent client ids name.
    client_ids: Arc<dyn ClientIds>,
    /// This replica's WebSocket connections.
    hub: Arc<Hub>,
    passwords: PasswordHasher,
    tokens: Tokens,
    /// Usernames resolved to ids without a store round trip.
    names: NameCache,
    /// Which recipients accepted which senders, for the relay.
    consents: ConsentCache,
    /// Users online on every replica, as presence last counted them: the
    /// audience of a broadcast.
    online_count: std::sync::atomic::AtomicU64,
    /// Contact lists of the online panel, kept current with presence.
    online: OnlineContacts,
    /// Offline messages, and messages held for connections that acknowledge,
    /// stored in batches under the mailbox quota.
    writer: MessageWriter,
    /// Read and acknowledged messages, deleted in batches.
    reads: ReadMarker,
    settings: Arc<Settings>,
}

/// Which backends answer, for `/readyz`.
pub struct Readiness {
    pub store: bool,
    pub presence: bool,
    pub bus: bool,
}

impl Services {
    /// The flows over these backends; `hub` is the event sink the bus was
    /// built with.
    pub fn new(
        settings: Arc<Settings>,
        backends: Backends,
        hub: Arc<Hub>,
        tokens: Tokens,
    ) -> anyhow::Result<Self> {
        let Backends {
            store,
            revocations,
            presence,
            bus,
            limiter,
            client_ids,
        } = backends;
        anyhow::ensure!(
            settings.deleted_name_retention() >= names::TIME_TO_LIVE,
            "DELETED_NAME_RETENTION_SECS must be at least {} s: replicas may remember a name that long",
            names::TIME_TO_LIVE.as_secs()
        );
        Ok(Self {
            passwords: PasswordHasher::new(
                settings.hash_concurrency(),
                settings.max_queued_hashes,
            )?,
            tokens,
            names: NameCache::default(),
            consents: ConsentCache::default(),
            online_count: Default::default(),
            online: OnlineContacts::default(),
            reads: ReadMarker::start(store.clone()),
            writer: MessageWriter::start(
                store.clone(),
                MailboxQuota {
                    messages: settings.mailbox_max_messages,
                    bytes: settings.mailbox_max_bytes,
                    from_strangers: settings.mailbox_stranger_messages,
                },
            ),
            store,
            revocations,
            presence,
            bus,
            limiter,
            client_ids,
            hub,
            settings,
        })
    }

    pub async fn readiness(&self) -> Readiness {
        let (store, presence, bus) =
            tokio::join!(self.store.ping(), self.presence.ping(), self.bus.ping());
        Readiness {
            store: store.is_ok(),
            presence: presence.is_ok(),
            bus: bus.is_ok(),
        }
    }

    /// Renews the presence leases of the users connected here, and refreshes
    /// the online-users gauge; run every third of a lease.
    pub async fn renew_presence(&self) {
        if let Err(err) = self.presence.renew(&self.hub.held()).await {
            tracing::warn!(error = %err, "presence renewal failed");
        }
        if let Ok(online) = self.presence.count_online().await {
            metrics::online_users(online);
            self.online_count
                .store(online, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
