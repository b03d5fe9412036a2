//! Whether this replica's backends answer, for `/readyz`.

use std::sync::Arc;

use crate::{bus::Bus, presence::Presence, store::Store};

pub struct Health {
    pub(super) store: Arc<dyn Store>,
    pub(super) presence: Arc<dyn Presence>,
    pub(super) bus: Arc<dyn Bus>,
}

/// Which backends answer.
pub struct Readiness {
    pub store: bool,
    pub presence: bool,
    pub bus: bool,
}

impl Health {
    pub async fn readiness(&self) -> Readiness {
        let (store, presence, bus) =
            tokio::join!(self.store.ping(), self.presence.ping(), self.bus.ping());
        Readiness {
            store: store.is_ok(),
            presence: presence.is_ok(),
            bus: bus.is_ok(),
        }
    }
}
