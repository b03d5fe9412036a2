//! Combining concurrent requests into one round trip: callers submit items, one
//! task takes whatever is waiting (up to a batch) and does the work for all of
//! them at once, then answers each caller. Under load, batches form by
//! themselves; alone, an item goes out at once.

use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot};

type Job<I, O, E> = (I, oneshot::Sender<Result<O, Arc<E>>>);

#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    /// The batching task has stopped (the process is shutting down).
    #[error("the batching task stopped")]
    Stopped,
    /// The batch this item was in failed; every item in it sees the same error.
    #[error("{0}")]
    Failed(Arc<E>),
}

pub struct Batcher<I, O, E> {
    queue: mpsc::Sender<Job<I, O, E>>,
}

impl<I, O, E> Batcher<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// `work` gets up to `max` items and answers with one output per item, in order.
    pub fn start<F, Fut>(max: usize, mut work: F) -> Self
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<O>, E>> + Send,
    {
        let (queue, mut jobs) = mpsc::channel::<Job<I, O, E>>(4 * max);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while jobs.recv_many(&mut batch, max).await > 0 {
                let (items, waiters): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
                match work(items).await {
                    Ok(outputs) => {
                        for (waiter, output) in waiters.into_iter().zip(outputs) {
                            let _ = waiter.send(Ok(output));
                        }
                    }
                    Err(err) => {
                        let err = Arc::new(err);
                        for waiter in waiters {
                            let _ = waiter.send(Err(err.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    pub async fn submit(&self, item: I) -> Result<O, BatchError<E>> {
        self.queue(item).await.await
    }

    /// Queues `item` and returns its answer to await apart: items queued one
    /// after another go out in that order, so a caller may queue several
    /// before the first is answered and have them share a batch. Waits only
    /// while the queue is full.
    pub async fn queue(
        &self,
        item: I,
    ) -> impl Future<Output = Result<O, BatchError<E>>> + Send + 'static {
        let (answer, answered) = oneshot::channel();
        let queued = self.queue.send((item, answer)).await;
        async move {
            queued.map_err(|_| BatchError::Stopped)?;
            match answered.await {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(err)) => Err(BatchError::Failed(err)),
                Err(_) => Err(BatchError::Stopped),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_items_share_batches_and_get_their_own_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let doubler = Arc::new(Batcher::start(64, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, String>(items.into_iter().map(|i| i * 2).collect()) }
        }));
        let answers = futures_util::future::join_all((0..200).map(|i| {
            let doubler = doubler.clone();
            async move { doubler.submit(i).await.unwrap() }
        }))
        .await;
        assert_eq!(answers, (0..200).map(|i| i * 2).collect::<Vec<_>>());
        assert!(
            calls.load(Ordering::Relaxed) < 200,
            "some items shared a batch"
        );
    }

    #[tokio::test]
    async fn items_queued_before_their_answers_go_out_together_in_order() {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = batches.clone();
        let echo = Batcher::start(64, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.clone());
            async move { Ok::<_, String>(items) }
        });
        let mut answers = Vec::new();
        for i in 0..10 {
            answers.push(echo.queue(i).await);
        }
        let mut answered = Vec::new();
        for answer in answers {
            answered.push(answer.await.unwrap());
        }
        assert_eq!(answered, (0..10).collect::<Vec<_>>());
        // On this single-threaded runtime the batching task runs only once
        // the caller waits: every item queued before is in its one batch.
        assert_eq!(*batches.lock().unwrap(), vec![(0..10).collect::<Vec<_>>()]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items() {
        let failing = Batcher::start(8, |_: Vec<u32>| async { Err::<Vec<u32>, _>("down") });
        assert!(matches!(failing.submit(1).await, Err(BatchError::Failed(e)) if *e == "down"));
    }
}
