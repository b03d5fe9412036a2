//! Client ids in this process: a bounded cache whose entries lapse after
//! the window.

use std::time::Duration;

use async_trait::async_trait;
use moka::{ops::compute::Op, sync::Cache};

use crate::{
    client_ids::{ClientIdError, ClientIds},
    domain::UserId,
};

/// Client ids remembered at most; beyond, the oldest go first (a duplicate
/// of theirs would be delivered again: at least once, never lost).
const CAPACITY: u64 = 500_000;

pub struct MemoryClientIds {
    ids: Cache<(UserId, Box<str>), i64>,
}

impl MemoryClientIds {
    pub fn new(window: Duration) -> Self {
        Self {
            ids: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(window)
                .build(),
        }
    }
}

#[async_trait]
impl ClientIds for MemoryClientIds {
    async fn remember(
        &self,
        sender: UserId,
        client_id: &str,
        id: i64,
    ) -> Result<Option<i64>, ClientIdError> {
        let entry = self.ids.entry((sender, client_id.into())).or_insert(id);
        Ok((!entry.is_fresh()).then(|| entry.into_value()))
    }

    async fn forget(&self, sender: UserId, client_id: &str, id: i64) -> Result<(), ClientIdError> {
        self.ids
            .entry((sender, client_id.into()))
            .and_compute_with(|held| match held {
                Some(held) if *held.value() == id => Op::Remove,
                _ => Op::Nop,
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ids::contract;

    #[tokio::test]
    async fn keeps_the_client_id_contract() {
        let fresh = || MemoryClientIds::new(Duration::from_secs(60));
        contract::a_client_id_names_one_message_per_sender(&fresh()).await;
        contract::a_refused_message_is_forgotten(&fresh()).await;
        contract::client_ids_are_forgotten_after_the_window(&MemoryClientIds::new(
            contract::WINDOW,
        ))
        .await;
    }
}
