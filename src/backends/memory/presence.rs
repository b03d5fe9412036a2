//! In-process presence for the embedded default (one server, no Redis).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    domain::{Endpoint, UserId},
    presence::{ContactsVersion, Held, Presence, PresenceResult, Sighting},
};

#[derive(Default)]
struct Entry {
    sighting: Option<Sighting>,
    lease_until: Option<Instant>,
    /// Open WebSockets per token.
    connections: HashMap<String, u32>,
}

impl Entry {
    fn live(&self, now: Instant) -> Option<Sighting> {
        self.sighting
            .filter(|_| self.lease_until.is_some_and(|until| until > now))
    }

    fn connection_count(&self) -> u32 {
        self.connections.values().sum()
    }

    /// Keeps a live address, else takes `at`; renews the lease.
    fn hold(&mut self, at: Endpoint, seen: DateTime<Utc>, now: Instant, lease: Duration) {
        let at = self.live(now).map_or(at, |s| s.at);
        self.sighting = Some(Sighting { at, seen });
        self.lease_until = Some(now + lease);
    }

    fn seen(&mut self, seen: DateTime<Utc>) {
        if let Some(s) = &mut self.sighting {
            s.seen = seen;
        }
    }
}

/// Keyed by user ids, which the store hands out (nobody picks one to collide):
/// a fast hash, where SipHash was a twentieth of an online panel's cost.
type ByUser<V> = HashMap<UserId, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    entries: ByUser<Entry>,
    /// Bumped on every change of a user's contact list.
    versions: ByUser<ContactsVersion>,
}

impl State {
    fn locate(&self, users: &[UserId], now: Instant) -> Vec<Option<Sighting>> {
        users
            .iter()
            .map(|u| self.entries.get(u).and_then(|e| e.live(now)))
            .collect()
    }
}

pub struct MemoryPresence {
    lease: Duration,
    state: Mutex<State>,
}

impl MemoryPresence {
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            state: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State, Instant) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state, Instant::now())
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn ping(&self) -> PresenceResult<()> {
        Ok(())
    }

    async fn announce(
        &self,
        user: UserId,
        at: Endpoint,
        seen: DateTime<Utc>,
    ) -> PresenceResult<()> {
        self.with(|state, now| {
            let entry = state.entries.entry(user).or_default();
            entry.sighting = Some(Sighting { at, seen });
            entry.lease_until = Some(now + self.lease);
        });
        Ok(())
    }

    async fn connection_opened(
        &self,
        user: UserId,
        jti: &str,
        fallback: Endpoint,
        seen: DateTime<Utc>,
    ) -> PresenceResult<u32> {
        Ok(self.with(|state, now| {
            let entry = state.entries.entry(user).or_default();
            entry.hold(fallback, seen, now, self.lease);
            *entry.connections.entry(jti.to_owned()).or_default() += 1;
            entry.connection_count()
        }))
    }

    async fn connection_closed(
        &self,
        user: UserId,
        jti: &str,
        seen: DateTime<Utc>,
    ) -> PresenceResult<u32> {
        Ok(self.with(|state, _| {
            let Some(entry) = state.entries.get_mut(&user) else {
                return 0;
            };
            if let Some(count) = entry.connections.get_mut(jti) {
                *count -= 1;
                if *count == 0 {
                    entry.connections.remove(jti);
                }
            }
            entry.seen(seen);
            entry.connection_count()
        }))
    }

    async fn renew(&self, held: &[Held]) -> PresenceResult<()> {
        self.with(|state, now| {
            for h in held {
                let entry = state.entries.entry(h.user).or_default();
                let seen = entry.live(now).map_or_else(Utc::now, |s| s.seen);
                entry.hold(h.at, seen, now, self.lease);
                entry
                    .connections
                    .entry(h.jti.clone())
                    .or_insert(h.connections);
            }
            // Forget users whose lease ran out and who hold no connection.
            state
                .entries
                .retain(|_, e| e.connection_count() > 0 || e.live(now).is_some());
        });
        Ok(())
    }

    async fn sign_off(
        &self,
        user: UserId,
        jti: Option<&str>,
        seen: DateTime<Utc>,
    ) -> PresenceResult<bool> {
        Ok(self.with(|state, _| {
            let Some(entry) = state.entries.get_mut(&user) else {
                return false;
            };
            let others_connected = entry
                .connections
                .iter()
                .any(|(token, n)| jti.is_some_and(|jti| token != jti) && *n > 0);
            if others_connected {
                entry.seen(seen);
            } else {
                entry.lease_until = None;
            }
            others_connected
        }))
    }

    async fn count_online(&self) -> PresenceResult<u64> {
        Ok(self.with(|state, now| {
            state
                .entries
                .values()
                .filter(|e| e.live(now).is_some())
                .count() as u64
        }))
    }

    async fn locate(&self, users: &[UserId]) -> PresenceResult<Vec<Option<Sighting>>> {
        Ok(self.with(|state, now| state.locate(users, now)))
    }

    async fn contacts_changed(&self, users: &[UserId]) -> PresenceResult<()> {
        self.with(|state, _| {
            for user in users {
                *state.versions.entry(*user).or_default() += 1;
            }
        });
        Ok(())
    }

    async fn locate_contacts(
        &self,
        viewer: UserId,
        contacts: &[UserId],
    ) -> PresenceResult<(ContactsVersion, Vec<Option<Sighting>>)> {
        Ok(self.with(|state, now| {
            let version = state.versions.get(&viewer).copied().unwrap_or_default();
            (version, state.locate(contacts, now))
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
    async fn contact_versions_follow_changes() {
        contract::contact_versions_follow_changes(&presence()).await;
    }

    #[tokio::test]
    async fn lease_runs_out_unless_renewed() {
        contract::lease_runs_out_unless_renewed(&MemoryPresence::new(Duration::from_secs(1))).await;
    }
}
