//! Offline messages written in batches: concurrent stores are combined into one
//! multi-row insert, so a burst costs one round trip (and, on SQLite, one
//! writer-lock acquisition) per batch instead of one per message.

use std::sync::Arc;

use crate::{
    batch::Batcher,
    store::{Admission, MailboxQuota, NewMessage, Store, StoreError, StoreResult},
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
