//! Offline messages written, and read ones deleted, in batches: concurrent
//! stores are combined into one multi-row insert (and deletions into one
//! delete), so a burst costs one round trip (and, on SQLite, one writer-lock
//! acquisition) per batch instead of one per message.

use std::{collections::HashMap, sync::Arc};

use crate::{
    batch::Batcher,
    domain::UserId,
    store::{Acked, Admission, MailboxQuota, NewMessage, Store, StoreError, StoreResult},
};

/// Messages combined into one insert at most.
const BATCH: usize = 512;

pub struct MessageWriter {
    batcher: Batcher<NewMessage, Admission, StoreError>,
}

impl MessageWriter {
    /// A writer that stores what fits its recipient's mailbox under `quota`.
    pub fn start(store: Arc<dyn Store>, quota: MailboxQuota) -> Self {
        let batcher = Batcher::start(BATCH, move |messages: Vec<NewMessage>| {
            let store = store.clone();
            async move { store.store_messages(&messages, quota).await }
        });
        Self { batcher }
    }

    /// Stores one message if its recipient's mailbox has room, together with
    /// whatever else is waiting.
    pub async fn store(&self, message: NewMessage) -> StoreResult<Admission> {
        Ok(self.batcher.submit(message).await?)
    }
}

/// Read and acknowledged messages deleted in batches: concurrent deletions,
/// of any recipients, share one statement.
pub struct ReadMarker {
    batcher: Batcher<(UserId, Vec<i64>), Vec<Acked>, StoreError>,
}

impl ReadMarker {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let batcher = Batcher::start(256, move |requests: Vec<(UserId, Vec<i64>)>| {
            let store = store.clone();
            async move {
                let reads: Vec<(UserId, i64)> = requests
                    .iter()
                    .flat_map(|(recipient, ids)| ids.iter().map(move |id| (*recipient, *id)))
                    .collect();
                let mut deleted: HashMap<(UserId, i64), Acked> = store
                    .delete_read(&reads)
                    .await?
                    .into_iter()
                    .map(|a| ((a.recipient_id, a.id), a))
                    .collect();
                Ok(requests
                    .iter()
                    .map(|(recipient, ids)| {
                        ids.iter()
                            .filter_map(|id| deleted.remove(&(*recipient, *id)))
                            .collect()
                    })
                    .collect())
            }
        });
        Self { batcher }
    }

    /// Deletes these of `recipient`'s messages (others' ids are ignored),
    /// together with whatever else is being deleted; returns those deleted.
    pub async fn delete(&self, recipient: UserId, ids: &[i64]) -> StoreResult<Vec<Acked>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.batcher.submit((recipient, ids.to_vec())).await?)
    }
}
