//! The state every handler and WebSocket session receives.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Settings, service::Services};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// Every flow that reaches a backend goes through here: `state.relay`,
    /// `state.accounts` and the others, through `Deref`.
    pub services: Arc<Services>,
    pub metrics: PrometheusHandle,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// WebSocket sessions, awaited at shutdown.
    pub sessions: TaskTracker,
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}
