//! Whether this replica's backends answer, for `/readyz` and `/metrics`.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{bus::Bus, presence::Presence, store::Store};

/// A ping that has not answered in this long counts as failed: a probe or a
/// scrape must not hang on a backend that does not answer.
const PING_DEADLINE: Duration = Duration::from_secs(3);

pub struct Health {
    pub(super) store: Arc<dyn Store>,
    pub(super) presence: Arc<dyn Presence>,
    pub(super) bus: Arc<dyn Bus>,
}

/// Each backend by name (`store`, `presence`, `bus`), whether it answered a
/// ping, and how long it took.
pub type Probe = [(&'static str, bool, Duration); 3];

/// Ready: every backend answers and the replica is not shutting down.
pub fn ready(probe: &Probe, draining: bool) -> bool {
    probe.iter().all(|(_, up, _)| *up) && !draining
}

/// Whether `ping` answered in time, and how long it took.
async fn timed<E>(ping: impl Future<Output = Result<(), E>>) -> (bool, Duration) {
    let started = Instant::now();
    let answered = tokio::time::timeout(PING_DEADLINE, ping).await;
    (matches!(answered, Ok(Ok(()))), started.elapsed())
}

impl Health {
    /// Pings every backend at once.
    pub async fn probe(&self) -> Probe {
        let (store, presence, bus) = tokio::join!(
            timed(self.store.ping()),
            timed(self.presence.ping()),
            timed(self.bus.ping())
        );
        [
            ("store", store.0, store.1),
            ("presence", presence.0, presence.1),
            ("bus", bus.0, bus.1),
        ]
    }
}
