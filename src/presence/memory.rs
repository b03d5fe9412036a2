//! In-process presence for the embedded default (one server, no Redis).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;

use super::{Endpoint, Held, Presence, PresenceResult};
use crate::store::UserId;

#[derive(Default)]
struct Entry {
    endpoint: Option<Endpoint>,
    lease_until: Option<Instant>,
    /// Open WebSockets per token.
    connections: HashMap<String, u32>,
}

impl Entry {
    fn live_endpoint(&self, now: Instant) -> Option<Endpoint> {
        self.endpoint
            .filter(|_| self.lease_until.is_some_and(|until| until > now))
    }

    fn connection_count(&self) -> u32 {
        self.connections.values().sum()
    }
}

pub struct MemoryPresence {
    lease: Duration,
    entries: Mutex<HashMap<UserId, Entry>>,
}

impl MemoryPresence {
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<UserId, Entry>, Instant) -> T) -> T {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut entries, Instant::now())
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn ping(&self) -> PresenceResult<()> {
        Ok(())
    }

    async fn announce(&self, user: UserId, at: Endpoint) -> PresenceResult<()> {
        self.with(|entries, now| {
            let entry = entries.entry(user).or_default();
            entry.endpoint = Some(at);
            entry.lease_until = Some(now + self.lease);
        });
        Ok(())
    }

    async fn connection_opened(
        &self,
        user: UserId,
        jti: &str,
        fallback: Endpoint,
    ) -> PresenceResult<u32> {
        Ok(self.with(|entries, now| {
            let entry = entries.entry(user).or_default();
            if entry.live_endpoint(now).is_none() {
                entry.endpoint = Some(fallback);
            }
            entry.lease_until = Some(now + self.lease);
            *entry.connections.entry(jti.to_owned()).or_default() += 1;
            entry.connection_count()
        }))
    }

    async fn connection_closed(&self, user: UserId, jti: &str) -> PresenceResult<u32> {
        Ok(self.with(|entries, _| {
            let Some(entry) = entries.get_mut(&user) else {
                return 0;
            };
            if let Some(count) = entry.connections.get_mut(jti) {
                *count -= 1;
                if *count == 0 {
                    entry.connections.remove(jti);
                }
            }
            entry.connection_count()
        }))
    }

    async fn renew(&self, held: &[Held]) -> PresenceResult<()> {
        self.with(|entries, now| {
            for h in held {
                let entry = entries.entry(h.user).or_default();
                if entry.live_endpoint(now).is_none() {
                    entry.endpoint = Some(h.at);
                }
                entry.lease_until = Some(now + self.lease);
                entry
                    .connections
                    .entry(h.jti.clone())
                    .or_insert(h.connections);
            }
            // Forget users whose lease ran out and who hold no connection.
            entries.retain(|_, e| e.connection_count() > 0 || e.live_endpoint(now).is_some());
        });
        Ok(())
    }

    async fn sign_off(&self, user: UserId, jti: &str) -> PresenceResult<bool> {
        Ok(self.with(|entries, _| {
            let Some(entry) = entries.get_mut(&user) else {
                return false;
            };
            let others_connected = entry
                .connections
                .iter()
                .any(|(token, n)| token != jti && *n > 0);
            if !others_connected {
                entry.lease_until = None;
            }
            others_connected
        }))
    }

    async fn count_online(&self) -> PresenceResult<u64> {
        Ok(self.with(|entries, now| {
            entries
                .values()
                .filter(|e| e.live_endpoint(now).is_some())
                .count() as u64
        }))
    }

    async fn locate(&self, users: &[UserId]) -> PresenceResult<Vec<Option<Endpoint>>> {
        Ok(self.with(|entries, now| {
            users
                .iter()
                .map(|u| entries.get(u).and_then(|e| e.live_endpoint(now)))
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::contract;

    fn presence() -> MemoryPresence {
        MemoryPresence::new(Duration::from_secs(60))
    }

    #[tokio::test]
    async fn announce_and_locate() {
        contract::announce_and_locate(&presence()).await;
    }

    #[tokio::test]
    async fn connections_keep_known_address() {
        contract::connections_keep_known_address(&presence()).await;
    }

    #[tokio::test]
    async fn sign_off_respects_other_devices() {
        contract::sign_off_respects_other_devices(&presence()).await;
    }

    #[tokio::test]
    async fn renew_restores_what_was_lost() {
        contract::renew_restores_what_was_lost(&presence()).await;
    }

    #[tokio::test]
    async fn lease_runs_out_unless_renewed() {
        contract::lease_runs_out_unless_renewed(&MemoryPresence::new(Duration::from_secs(1))).await;
    }
}
