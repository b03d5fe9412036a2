//! The state every handler and WebSocket session receives.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::{jwt::Tokens, password::PasswordHasher, revocation::Revocations},
    bus::Bus,
    config::Settings,
    online::OnlineContacts,
    presence::Presence,
    store::{Store, names::NameCache, writer::MessageWriter},
    ws::hub::Hub,
};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub revocations: Arc<dyn Revocations>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn Bus>,
    /// This replica's WebSocket connections.
    pub hub: Arc<Hub>,
    pub passwords: Arc<PasswordHasher>,
    /// Offline messages, stored in batches.
    pub messages: Arc<MessageWriter>,
    /// Contact lists of the online panel, kept current with presence.
    pub online: Arc<OnlineContacts>,
    /// Usernames resolved to ids without a store round trip.
    pub names: Arc<NameCache>,
    pub tokens: Arc<Tokens>,
    pub metrics: PrometheusHandle,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// WebSocket sessions, awaited at shutdown.
    pub sessions: TaskTracker,
}
