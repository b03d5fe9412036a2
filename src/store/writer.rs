//! Offline messages written in batches: concurrent stores are combined into one
//! multi-row insert, so a burst costs one round trip (and, on SQLite, one
//! writer-lock acquisition) per batch instead of one per message.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Message, NewMessage, Store, StoreError, StoreResult};

/// Messages combined into one insert at most.
const BATCH: usize = 512;

type Pending = (NewMessage, oneshot::Sender<StoreResult<Message>>);

pub struct MessageWriter {
    queue: mpsc::Sender<Pending>,
}

impl MessageWriter {
    /// Starts the writing task; it ends when the writer is dropped.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, pending) = mpsc::channel(4 * BATCH);
        tokio::spawn(write_batches(store, pending));
        Self { queue }
    }

    /// Stores one message, together with whatever else is waiting.
    pub async fn store(&self, message: NewMessage) -> StoreResult<Message> {
        let (done, stored) = oneshot::channel();
        let closed = || StoreError::Unavailable(anyhow::anyhow!("the message writer stopped"));
        self.queue
            .send((message, done))
            .await
            .map_err(|_| closed())?;
        stored.await.map_err(|_| closed())?
    }
}

async fn write_batches(store: Arc<dyn Store>, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut batch, BATCH).await > 0 {
        let (messages, waiters): (Vec<NewMessage>, Vec<_>) = batch.drain(..).unzip();
        match store.store_messages(&messages).await {
            Ok(stored) => {
                for (waiter, message) in waiters.into_iter().zip(stored) {
                    let _ = waiter.send(Ok(message));
                }
            }
            Err(err) => {
                let unavailable = matches!(err, StoreError::Unavailable(_));
                let text = format!("{err:#}");
                for waiter in waiters {
                    let err = anyhow::anyhow!("{text}");
                    let _ = waiter.send(Err(if unavailable {
                        StoreError::Unavailable(err)
                    } else {
                        StoreError::Other(err)
                    }));
                }
            }
        }
    }
}
