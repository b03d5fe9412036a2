//! A WebSocket connection's plumbing, which the hub (service layer) fills and
//! the session (WebSocket edge) drains: its bounded outbox, the receipts of
//! directed messages queued to it, how it takes its messages, and how it is
//! asked to close. Neither layer owns it; both use it.

use std::{
    collections::{BTreeSet, HashSet},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{DirectMessage, Disconnect};

/// A frame, or work, waiting in a connection's outbox.
pub enum Outgoing {
    /// A frame to write. A directed message's carries its receipt, signed
    /// once it is written; for a connection that acknowledges, once it is
    /// stored (held for it), before it is written.
    Frame(Utf8Bytes, Option<Arc<Receipt>>),
    /// Fetch the stored messages waiting for the user and write them.
    Fetch,
}

/// Every idle connection's outbox keeps room for 32 of these: two variants,
/// so that the tag fits in a pointer's niche, keep it at five words.
const _: () = assert!(std::mem::size_of::<Outgoing>() == 40);

impl Outgoing {
    pub fn text(frame: Utf8Bytes) -> Self {
        Self::Frame(frame, None)
    }

    pub fn direct(frame: Utf8Bytes, receipt: Arc<Receipt>) -> Self {
        Self::Frame(frame, Some(receipt))
    }
}

/// Shared by the copies of one directed message queued to its recipient's
/// connections. When the last copy goes away with none written (or stored for
/// a connection that acknowledges), the message goes back to be stored
/// offline.
pub struct Receipt {
    message: Option<Arc<DirectMessage>>,
    settled: AtomicBool,
    undelivered: mpsc::UnboundedSender<Arc<DirectMessage>>,
}

impl Receipt {
    /// The receipt of `message`, handed back through `undelivered` unless settled.
    pub fn new(
        message: Arc<DirectMessage>,
        undelivered: mpsc::UnboundedSender<Arc<DirectMessage>>,
    ) -> Self {
        Self {
            message: Some(message),
            settled: AtomicBool::new(false),
            undelivered,
        }
    }

    /// The message this receipt answers for.
    pub fn message(&self) -> &Arc<DirectMessage> {
        self.message
            .as_ref()
            .expect("a receipt's message is taken only when it is dropped")
    }

    /// The message is safe: written to a connection, or stored for one.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed)
            && let Some(message) = self.message.take()
        {
            let _ = self.undelivered.send(message);
        }
    }
}

/// Most messages one connection may hold unacknowledged: beyond, it is
/// closed (they wait for its next connection).
pub const MAX_UNACKED: usize = 2 * crate::store::INBOX_PAGE as usize;

/// How a connection takes its messages, shared by the hub and its session.
#[derive(Default)]
pub struct Delivery {
    /// Opened with `?ack=manual`: messages carry ids and are held until the
    /// client acknowledges them.
    pub manual_ack: bool,
    /// Gets `delivered` receipts: acknowledges, or has sent a `client_id`.
    receipts: AtomicBool,
    /// A [`Outgoing::Fetch`] is queued already.
    fetch_queued: AtomicBool,
    /// Messages written (or about to be) and held for it, not yet
    /// acknowledged, and those acknowledged since the writer's last fetch.
    held: Mutex<Holding>,
}

#[derive(Default)]
struct Holding {
    unacked: BTreeSet<i64>,
    /// A fetch that claimed a message just before its acknowledgement was
    /// stored still gets it: these are not written again.
    acked_since_fetch: HashSet<i64>,
    /// Acknowledged while the store was down: their deletion is retried
    /// elsewhere, and until it is stored a fetch finds them; never written
    /// to this connection again.
    acked_unstored: HashSet<i64>,
}

impl Delivery {
    pub fn new(manual_ack: bool) -> Self {
        Self {
            manual_ack,
            receipts: AtomicBool::new(manual_ack),
            ..Self::default()
        }
    }

    /// Whether the connection gets `delivered` receipts.
    pub fn wants_receipts(&self) -> bool {
        self.receipts.load(Ordering::Relaxed)
    }

    /// Marks a fetch queued; false when one was queued already.
    pub fn queue_fetch(&self) -> bool {
        !self.fetch_queued.swap(true, Ordering::AcqRel)
    }

    /// The client sent a `client_id`: it understands receipts.
    pub fn want_receipts(&self) {
        self.receipts.store(true, Ordering::Relaxed);
    }

    /// The writer takes the queued fetch: later notices queue another. An
    /// acknowledgement stored before this cannot be behind the fetch's claim.
    pub fn fetch_taken(&self) {
        self.fetch_queued.store(false, Ordering::Release);
        self.held().acked_since_fetch.clear();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records messages held for this connection; false when it now holds
    /// more than [`MAX_UNACKED`].
    pub fn hold(&self, ids: impl IntoIterator<Item = i64>) -> bool {
        let mut held = self.held();
        held.unacked.extend(ids);
        held.unacked.len() <= MAX_UNACKED
    }

    /// These messages were acknowledged (and their deletion stored), or
    /// will never be held: they are not written to this connection again.
    pub fn acknowledged(&self, ids: &[i64]) {
        let mut held = self.held();
        for id in ids {
            held.unacked.remove(id);
            held.acked_since_fetch.insert(*id);
        }
    }

    /// These messages were acknowledged, but their deletion is not stored
    /// yet (it is retried): unlike [`Delivery::acknowledged`], no fetch of
    /// this connection writes them again, however late it comes.
    pub fn acknowledged_unstored(&self, ids: &[i64]) {
        let mut held = self.held();
        for id in ids {
            held.unacked.remove(id);
            held.acked_unstored.insert(*id);
        }
    }

    /// These messages are not held after all (they were not written): a
    /// later fetch writes them.
    pub fn unhold(&self, ids: &[i64]) {
        let mut held = self.held();
        for id in ids {
            held.unacked.remove(id);
        }
    }

    /// The messages held, oldest first.
    pub fn unacked(&self) -> Vec<i64> {
        self.held().unacked.iter().copied().collect()
    }

    /// The messages a fetch must not write: held already, or acknowledged
    /// since the fetch began.
    pub fn passed(&self) -> HashSet<i64> {
        let held = self.held();
        held.unacked
            .iter()
            .chain(&held.acked_since_fetch)
            .chain(&held.acked_unstored)
            .copied()
            .collect()
    }
}

/// Asks a connection to close, saying why.
#[derive(Clone, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<Disconnect>>,
    shutdown: CancellationToken,
}

impl Closer {
    /// A closer that also fires when `shutdown` is cancelled.
    pub fn child_of(shutdown: &CancellationToken) -> Self {
        Self {
            token: shutdown.child_token(),
            reason: Arc::default(),
            shutdown: shutdown.clone(),
        }
    }

    /// Closes for this reason, unless a reason was given already; true when
    /// this was the first. A connection closed as too slow is counted here,
    /// once, whichever path found it slow.
    pub fn close(&self, why: Disconnect) -> bool {
        let first = self.reason.set(why).is_ok();
        self.token.cancel();
        if first && why == Disconnect::TooSlow {
            crate::metrics::slow_consumer_closed();
        }
        first
    }

    /// Ends the connection with no reason of its own (the client left).
    pub fn finish(&self) {
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn reason(&self) -> Disconnect {
        match self.reason.get() {
            Some(reason) => *reason,
            None if self.shutdown.is_cancelled() => Disconnect::ShuttingDown,
            None => Disconnect::Normal,
        }
    }
}

/// A connection's queue of frames to write, bounded in frames and in bytes.
/// Offering never waits: a queue that is full closes its connection as too
/// slow (the client reads too slowly, or not at all).
#[derive(Clone)]
pub struct Outbox {
    frames: mpsc::Sender<Outgoing>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    closer: Closer,
}

/// The writer's end of an [`Outbox`]. The bytes of the frames it takes are
/// given back to the bound in one step per batch ([`OutboxReader::settle`]), so that
/// the writer touches the shared count once per flush, not once per frame.
pub struct OutboxReader {
    frames: mpsc::Receiver<Outgoing>,
    bytes: Arc<AtomicUsize>,
    taken: usize,
}

/// A new outbox of at most `max_frames` frames and `max_bytes` bytes, which
/// closes its connection through `closer`.
pub fn outbox(max_frames: usize, max_bytes: usize, closer: Closer) -> (Outbox, OutboxReader) {
    let (frames, receiver) = mpsc::channel(max_frames.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox {
        frames,
        bytes: bytes.clone(),
        max_bytes,
        closer,
    };
    (
        outbox,
        OutboxReader {
            frames: receiver,
            bytes,
            taken: 0,
        },
    )
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Self::Frame(frame, _) => frame.len(),
            Self::Fetch => 0,
        }
    }
}

impl Outbox {
    /// Queues a frame. False when it was not queued: the queue was full (the
    /// connection is now closing as too slow) or the connection is gone.
    pub fn offer(&self, item: Outgoing) -> bool {
        let size = item.len();
        if !self.take_bytes(size) {
            return false;
        }
        match self.frames.try_send(item) {
            Ok(()) => true,
            Err(full_or_closed) => {
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                if let mpsc::error::TrySendError::Full(_) = full_or_closed {
                    self.too_slow();
                }
                false
            }
        }
    }

    /// Queues a frame of the connection's own (a reply), waiting while the
    /// queue is full of frames: a client that sends faster than it is written
    /// to is slowed down, not cut off. Its caller bounds the wait. False when
    /// the frame was not queued (over the byte bound: the connection is now
    /// closing as too slow; or the connection is gone).
    pub async fn send(&self, item: Outgoing) -> bool {
        let Ok(place) = self.frames.reserve().await else {
            return false;
        };
        if !self.take_bytes(item.len()) {
            return false;
        }
        place.send(item);
        true
    }

    /// Counts `size` more bytes queued; over the bound, counts nothing and
    /// closes the connection as too slow.
    fn take_bytes(&self, size: usize) -> bool {
        if self.bytes.fetch_add(size, Ordering::Relaxed) + size <= self.max_bytes {
            return true;
        }
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.too_slow();
        false
    }

    fn too_slow(&self) {
        self.closer.close(Disconnect::TooSlow);
    }

    pub fn closer(&self) -> &Closer {
        &self.closer
    }
}

impl OutboxReader {
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let item = self.frames.recv().await?;
        self.taken += item.len();
        Some(item)
    }

    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let item = self.frames.try_recv().ok()?;
        self.taken += item.len();
        Some(item)
    }

    /// Gives the bytes of the frames taken since the last call back to the bound.
    pub fn settle(&mut self) {
        self.bytes
            .fetch_sub(std::mem::take(&mut self.taken), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(frames: usize) -> (Outbox, OutboxReader) {
        outbox(frames, usize::MAX, Closer::default())
    }

    #[tokio::test]
    async fn replies_wait_for_room_in_frames_but_not_in_bytes() {
        let closer = Closer::default();
        let (outbox, mut reader) = outbox(1, 10, closer.clone());
        let frame = |n: usize| Outgoing::text(Utf8Bytes::from("x".repeat(n)));
        assert!(outbox.send(frame(4)).await);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(frame(4)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one frame fills the queue");
        assert!(reader.recv().await.is_some());
        assert!(waiting.await.unwrap(), "queued once there was room");
        assert!(reader.recv().await.is_some());
        reader.settle();
        assert!(!outbox.send(frame(11)).await, "over the byte bound");
        assert_eq!(closer.reason(), Disconnect::TooSlow);
    }

    /// The slow-consumer metric counts connections: one connection that drops
    /// many frames, and is found slow again by the writer, counts once.
    #[test]
    fn a_slow_connection_counts_once_however_many_frames_it_drops() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let (outbox, _reader) = queue(1);
            for _ in 0..5 {
                outbox.offer(Outgoing::text(Utf8Bytes::from("x")));
            }
            outbox.closer().close(Disconnect::TooSlow);
            queue(1).0.closer().close(Disconnect::TooSlow);
        });
        let rendered = handle.render();
        let count = rendered
            .lines()
            .find_map(|l| l.strip_prefix("secchat_ws_slow_consumers_closed_total "));
        assert_eq!(count, Some("2"), "{rendered}");
    }

    #[test]
    fn an_outbox_is_bounded_in_bytes_too() {
        let closer = Closer::default();
        let (outbox, mut reader) = outbox(100, 10, closer.clone());
        let frame = |n: usize| Outgoing::text(Utf8Bytes::from("x".repeat(n)));
        assert!(outbox.offer(frame(6)));
        assert!(outbox.offer(frame(4)));
        assert!(!closer.token().is_cancelled());
        assert!(reader.try_recv().is_some());
        reader.settle();
        assert!(outbox.offer(frame(6)));
        assert!(!outbox.offer(frame(1)), "11 bytes would be queued");
        assert_eq!(closer.reason(), Disconnect::TooSlow);
    }

    /// A fetch may claim a message just before its acknowledgement is
    /// stored; until the next fetch begins, such a message is passed over
    /// (CI once saw one written twice on a busy machine).
    #[test]
    fn an_acknowledged_message_is_passed_over_until_the_next_fetch() {
        let delivery = Delivery::new(true);
        assert!(delivery.hold([1, 2]));
        delivery.acknowledged(&[1]);
        assert_eq!(delivery.unacked(), [2]);
        let passed = delivery.passed();
        assert!(passed.contains(&1) && passed.contains(&2));
        delivery.fetch_taken();
        assert!(!delivery.passed().contains(&1));
        assert!(delivery.passed().contains(&2));
    }
}
