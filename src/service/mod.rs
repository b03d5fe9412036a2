//! The service layer: every flow that touches more than one backend lives
//! here, one struct per flow holding only the backends it uses, so that the
//! HTTP handlers and the WebSocket session only translate between their
//! protocol and these calls.
//!
//! - `accounts`: register, log in and out, authenticate, "seen now", search,
//!   the account controls, TURN credentials;
//! - `contacts`: friend requests and contact lists, with presence;
//! - `relay`: directed messages and broadcasts, connections opening and
//!   closing, presence notices and leases;
//! - `inbox`: offline messages: stored, fetched, claimed, acknowledged,
//!   held, stored when no connection wrote them, expired;
//! - `health`: whether the backends answer;
//! - `hub`: this replica's WebSocket connections, where fan-out delivers;
//! - `authn`, `budget`, `visible`, `names`, `consent`, `online`, `writer`:
//!   what several flows share.

use std::sync::Arc;

use crate::{
    auth::{jwt::Tokens, password::PasswordHasher},
    capabilities::Backends,
    config::Settings,
    store::MailboxQuota,
};

pub mod accounts;
pub mod authn;
mod budget;
mod consent;
pub mod contacts;
pub mod error;
pub mod health;
pub mod hub;
pub mod inbox;
mod names;
pub mod online;
pub mod relay;
pub mod sessions;
pub mod turn;
pub mod visible;
mod writer;

use accounts::Accounts;
use authn::Authenticator;
use consent::ConsentCache;
use contacts::Contacts;
use health::Health;
use hub::Hub;
use inbox::Inbox;
use names::NameCache;
use online::OnlineContacts;
use relay::Relay;
use visible::PresenceView;
use writer::{MessageWriter, ReadMarker};

/// The flows of one replica, over its backends and its hub.
pub struct Services {
    pub accounts: Accounts,
    pub contacts: Contacts,
    pub relay: Arc<Relay>,
    pub inbox: Arc<Inbox>,
    pub health: Health,
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
        anyhow::ensure!(
            settings.deleted_name_retention() >= names::TIME_TO_LIVE,
            "DELETED_NAME_RETENTION_SECS must be at least {} s: replicas may remember a name that long",
            names::TIME_TO_LIVE.as_secs()
        );
        let Backends {
            store,
            revocations,
            refresh_tokens,
            presence,
            bus,
            limiter,
            client_ids,
        } = backends;
        let names = Arc::new(NameCache::default());
        let consents = Arc::new(ConsentCache::default());
        let view = || PresenceView {
            store: store.clone(),
            presence: presence.clone(),
            visibility: settings.presence.address_visibility,
        };
        let authn = Arc::new(Authenticator {
            tokens,
            revocations: revocations.clone(),
            store: store.clone(),
            names: names.clone(),
        });
        let inbox = Arc::new(Inbox {
            store: store.clone(),
            bus: bus.clone(),
            limiter: limiter.clone(),
            names: names.clone(),
            writer: MessageWriter::start(
                store.clone(),
                MailboxQuota {
                    messages: settings.delivery.mailbox_max_messages,
                    bytes: settings.delivery.mailbox_max_bytes,
                    from_strangers: settings.delivery.mailbox_stranger_messages,
                },
            ),
            reads: ReadMarker::start(store.clone()),
            settings: settings.clone(),
            unannounced: Default::default(),
            undeleted: Default::default(),
        });
        Ok(Self {
            accounts: Accounts {
                store: store.clone(),
                revocations,
                refresh_tokens,
                presence: presence.clone(),
                bus: bus.clone(),
                limiter: limiter.clone(),
                passwords: PasswordHasher::new(
                    settings.hash_concurrency(),
                    settings.accounts.max_queued_hashes,
                )?,
                authn: authn.clone(),
                names: names.clone(),
                view: view(),
                settings: settings.clone(),
            },
            contacts: Contacts {
                store: store.clone(),
                presence: presence.clone(),
                limiter: limiter.clone(),
                bus: bus.clone(),
                names: names.clone(),
                consents: consents.clone(),
                online: OnlineContacts::default(),
                view: view(),
                visibility: settings.presence.address_visibility,
            },
            relay: Arc::new(Relay {
                store: store.clone(),
                presence: presence.clone(),
                bus: bus.clone(),
                limiter,
                client_ids,
                hub,
                authn,
                names,
                consents,
                inbox: inbox.clone(),
                online_count: Default::default(),
                settings,
            }),
            inbox,
            health: Health {
                store,
                presence,
                bus,
            },
        })
    }
}
