//! This replica's open WebSockets, by user, and delivery to them.
//!
//! Delivery never waits on a client: each connection has a bounded outbox, and a
//! connection whose outbox is full is closed as too slow. A directed message that
//! no connection of its recipient managed to write (nor stored, for a
//! connection that acknowledges) is handed back, through its [`Receipt`], to be
//! stored as an offline message, so nothing is lost.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{Audience, Event, EventSink, Sessions},
    domain::{Arrival, DirectMessage, Disconnect, Endpoint, ServerFrame, UserId, client_group},
    presence,
};

/// A frame, or work, waiting in a connection's outbox.
pub enum Outgoing {
    Text(Utf8Bytes),
    /// A directed message: once written, its receipt is signed.
    Direct(Utf8Bytes, Arc<Receipt>),
    /// A directed message for a connection that acknowledges: stored (held
    /// for it) before it is written, then its receipt is signed.
    Tracked(Arc<DirectMessage>, Utf8Bytes, Arc<Receipt>),
    /// Fetch the stored messages waiting for the user and write them.
    Fetch,
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
}

impl Delivery {
    pub fn new(manual_ack: bool) -> Self {
        Self {
            manual_ack,
            receipts: AtomicBool::new(manual_ack),
            ..Self::default()
        }
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
/// given back to the bound in one step per batch ([`Inbox::settle`]), so that
/// the writer touches the shared count once per flush, not once per frame.
pub struct Inbox {
    frames: mpsc::Receiver<Outgoing>,
    bytes: Arc<AtomicUsize>,
    taken: usize,
}

/// A new outbox of at most `max_frames` frames and `max_bytes` bytes, which
/// closes its connection through `closer`.
pub fn outbox(max_frames: usize, max_bytes: usize, closer: Closer) -> (Outbox, Inbox) {
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
        Inbox {
            frames: receiver,
            bytes,
            taken: 0,
        },
    )
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Self::Text(frame) | Self::Direct(frame, _) | Self::Tracked(_, frame, _) => frame.len(),
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

impl Inbox {
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

#[derive(Clone)]
struct Connection {
    id: u64,
    jti: Arc<str>,
    at: Endpoint,
    outbox: Outbox,
    /// `delivery.manual_ack`, kept here: read for every directed message.
    manual_ack: bool,
    delivery: Arc<Delivery>,
}

impl Connection {
    /// Queues a fetch of stored messages unless one is queued already.
    fn fetch(&self) {
        if !self.delivery.fetch_queued.swap(true, Ordering::AcqRel)
            && !self.outbox.offer(Outgoing::Fetch)
        {
            self.delivery.fetch_taken();
        }
    }
}

pub struct Hub {
    connections: RwLock<Held>,
    next_id: AtomicU64,
    undelivered: mpsc::UnboundedSender<Arc<DirectMessage>>,
}

/// The connections held here: by user, and how many per client address.
#[derive(Default)]
struct Held {
    by_user: HashMap<UserId, Vec<Connection>>,
    by_ip: HashMap<IpAddr, usize>,
}

/// A connection's registration; dropping it does not unregister (call
/// [`Hub::unregister`]), so that the caller controls the order of clean-up.
pub struct Registration {
    pub id: u64,
    /// The first connection of this user on this replica.
    pub first_here: bool,
}

impl Hub {
    /// Directed messages that could not be written come out of the returned receiver.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Arc<DirectMessage>>) {
        let (undelivered, rx) = mpsc::unbounded_channel();
        let hub = Self {
            connections: RwLock::default(),
            next_id: AtomicU64::new(1),
            undelivered,
        };
        (hub, rx)
    }

    /// Registers a connection of `user` from `at`; `None` when its address
    /// already holds `max_per_ip` connections here.
    pub fn register(
        &self,
        user: UserId,
        jti: &str,
        at: Endpoint,
        outbox: Outbox,
        delivery: Arc<Delivery>,
        max_per_ip: usize,
    ) -> Option<Registration> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut held = self.connections.write().unwrap_or_else(|p| p.into_inner());
        // A /64 counts as one address, like the rate limits count it.
        let from_ip = held.by_ip.entry(client_group(at.ip)).or_default();
        if *from_ip >= max_per_ip {
            return None;
        }
        *from_ip += 1;
        let list = held.by_user.entry(user).or_default();
        let first_here = list.is_empty();
        list.push(Connection {
            id,
            jti: jti.into(),
            at,
            outbox,
            manual_ack: delivery.manual_ack,
            delivery,
        });
        Some(Registration { id, first_here })
    }

    /// Returns whether that was the user's last connection on this replica.
    pub fn unregister(&self, user: UserId, id: u64) -> bool {
        let mut held = self.connections.write().unwrap_or_else(|p| p.into_inner());
        let Held { by_user, by_ip } = &mut *held;
        let Some(list) = by_user.get_mut(&user) else {
            return true;
        };
        if let Some(at) = list.iter().position(|c| c.id == id) {
            let ip = client_group(list.swap_remove(at).at.ip);
            if let Some(count) = by_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        if list.is_empty() {
            by_user.remove(&user);
            true
        } else {
            false
        }
    }

    /// How many users hold a connection here.
    pub fn users_here(&self) -> usize {
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        held.by_user.len()
    }

    /// The connections held here, per user and token, for presence renewal.
    pub fn held(&self) -> Vec<presence::Held> {
        let map = &self
            .connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_user;
        let mut held: Vec<presence::Held> = Vec::with_capacity(map.len());
        for (user, conns) in map.iter() {
            let first = held.len();
            for conn in conns {
                match held[first..].iter_mut().find(|h| *h.jti == *conn.jti) {
                    Some(h) => {
                        h.connections += 1;
                        h.at = conn.at;
                    }
                    None => held.push(presence::Held {
                        user: *user,
                        jti: conn.jti.to_string(),
                        connections: 1,
                        at: conn.at,
                    }),
                }
            }
        }
        held
    }

    fn deliver_direct(&self, message: Arc<DirectMessage>) -> bool {
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        let map = &held.by_user;
        let Some(targets) = map.get(&message.recipient_id) else {
            return false;
        };
        // Rendered once for the connections of each kind.
        let (mut plain, mut tracked) = (None, None);
        let frame = |id| {
            Utf8Bytes::from(
                ServerFrame::Message {
                    arrival: Arrival::Live,
                    id,
                    sender_username: &message.sender_username,
                    content: &message.content,
                    sent_at: message.sent_at,
                }
                .to_text(),
            )
        };
        let receipt = Arc::new(Receipt {
            message: Some(message.clone()),
            settled: AtomicBool::new(false),
            undelivered: self.undelivered.clone(),
        });
        for conn in targets {
            let item = if conn.manual_ack {
                let frame = tracked.get_or_insert_with(|| frame(Some(message.id)));
                Outgoing::Tracked(message.clone(), frame.clone(), receipt.clone())
            } else {
                let frame = plain.get_or_insert_with(|| frame(None));
                Outgoing::Direct(frame.clone(), receipt.clone())
            };
            conn.outbox.offer(item);
        }
        crate::metrics::relayed(crate::metrics::Relay::Direct, targets.len());
        true
    }

    fn deliver_text(&self, text: String, audience: Audience) {
        // Encoded once; every connection shares the same bytes.
        let frame = Utf8Bytes::from(text);
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        let map = &held.by_user;
        let mut delivered = 0;
        let mut offer = |conns: &Vec<Connection>| {
            for conn in conns {
                conn.outbox.offer(Outgoing::Text(frame.clone()));
            }
            delivered += conns.len();
        };
        match audience {
            Audience::AllExcept(except) => map
                .iter()
                .filter(|(user, _)| **user != except)
                .for_each(|(_, conns)| offer(conns)),
            Audience::Users(users) => users.iter().filter_map(|u| map.get(u)).for_each(&mut offer),
        }
        crate::metrics::relayed(crate::metrics::Relay::Broadcast, delivered);
    }

    /// Where a connection held here connected from.
    pub fn endpoint(&self, user: UserId, id: u64) -> Option<Endpoint> {
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        let list = held.by_user.get(&user)?;
        list.iter().find(|c| c.id == id).map(|c| c.at)
    }

    /// The connection now stands on token `jti` (renewed in-band): closing
    /// that token's sessions closes it.
    pub fn rebind(&self, user: UserId, id: u64, jti: &str) {
        let mut held = self.connections.write().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = held
            .by_user
            .get_mut(&user)
            .and_then(|list| list.iter_mut().find(|c| c.id == id))
        {
            conn.jti = jti.into();
        }
    }

    /// `{"type": "delivered", "id"}` for each id, to those of the sender's
    /// connections that take receipts.
    fn deliver_receipts(&self, sender: UserId, ids: &[i64]) {
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = held.by_user.get(&sender) else {
            return;
        };
        let frames: Vec<Utf8Bytes> = ids
            .iter()
            .map(|&id| ServerFrame::Delivered { id }.to_text().into())
            .collect();
        for conn in conns
            .iter()
            .filter(|c| c.delivery.receipts.load(Ordering::Relaxed))
        {
            for frame in &frames {
                conn.outbox.offer(Outgoing::Text(frame.clone()));
            }
        }
    }

    /// Each connection of `user`'s (every connection here, for `None`)
    /// fetches the stored messages waiting for it.
    fn fetch_stored(&self, user: Option<UserId>) {
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        match user {
            Some(user) => held
                .by_user
                .get(&user)
                .into_iter()
                .flatten()
                .for_each(Connection::fetch),
            None => held.by_user.values().flatten().for_each(Connection::fetch),
        }
    }

    fn close_sessions(&self, user: UserId, sessions: &Sessions) {
        let held = self.connections.read().unwrap_or_else(|p| p.into_inner());
        let map = &held.by_user;
        for conn in map
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|c| sessions.include(&c.jti))
        {
            conn.outbox.closer().close(Disconnect::TokenRevoked);
        }
    }
}

impl EventSink for Hub {
    fn local_users(&self) -> Vec<UserId> {
        self.connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_user
            .keys()
            .copied()
            .collect()
    }

    fn holds(&self, user: UserId) -> bool {
        self.connections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_user
            .contains_key(&user)
    }

    fn undeliverable(&self, message: Arc<DirectMessage>) {
        let _ = self.undelivered.send(message);
    }

    fn deliver(&self, event: Event) -> bool {
        match event {
            Event::Direct(message) => self.deliver_direct(message),
            Event::Text { text, audience } => {
                self.deliver_text(text, audience);
                true
            }
            Event::CloseSessions { user, sessions } => {
                self.close_sessions(user, &sessions);
                true
            }
            Event::Delivered { sender, ids } => {
                self.deliver_receipts(sender, &ids);
                true
            }
            Event::Unread { user } => {
                self.fetch_stored(Some(user));
                true
            }
        }
    }

    fn resumed(&self) {
        self.fetch_stored(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(frames: usize) -> (Outbox, Inbox) {
        outbox(frames, usize::MAX, Closer::default())
    }

    fn here() -> Endpoint {
        Endpoint {
            ip: "127.0.0.1".parse().unwrap(),
            port: 9,
        }
    }

    #[test]
    fn held_groups_connections_by_user_and_token() {
        let (hub, _undelivered) = Hub::new();
        for jti in ["a", "a", "b"] {
            hub.register(2, jti, here(), queue(1).0, Arc::default(), usize::MAX);
        }
        let mut held = hub.held();
        held.sort_by(|x, y| x.jti.cmp(&y.jti));
        let counts: Vec<_> = held
            .iter()
            .map(|h| (h.user, h.jti.as_str(), h.connections))
            .collect();
        assert_eq!(counts, [(2, "a", 2), (2, "b", 1)]);
    }

    fn message(to: UserId) -> Arc<DirectMessage> {
        Arc::new(DirectMessage {
            id: 1,
            receipt: false,
            sender_id: 1,
            sender_username: "alice".into(),
            recipient_id: to,
            content: "hi".into(),
            sent_at: chrono::Utc::now(),
        })
    }

    #[test]
    fn direct_to_nobody_is_not_taken() {
        let (hub, mut undelivered) = Hub::new();
        assert!(!hub.deliver(Event::Direct(message(2))));
        assert!(
            undelivered.try_recv().is_err(),
            "the caller stores it, not the hub"
        );
    }

    #[test]
    fn unwritten_direct_comes_back_once() {
        let (hub, mut undelivered) = Hub::new();
        let (tx1, rx1) = queue(4);
        let (tx2, rx2) = queue(4);
        hub.register(2, "a", here(), tx1, Arc::default(), usize::MAX);
        hub.register(2, "b", here(), tx2, Arc::default(), usize::MAX);
        assert!(hub.deliver(Event::Direct(message(2))));
        drop((rx1, rx2));
        let back = undelivered.try_recv().unwrap();
        assert_eq!((back.recipient_id, back.content.as_str()), (2, "hi"));
        assert!(undelivered.try_recv().is_err(), "two copies, one message");
    }

    #[test]
    fn written_on_one_device_is_not_stored() {
        let (hub, mut undelivered) = Hub::new();
        let (tx1, mut rx1) = queue(4);
        let (tx2, rx2) = queue(4);
        hub.register(2, "a", here(), tx1, Arc::default(), usize::MAX);
        hub.register(2, "b", here(), tx2, Arc::default(), usize::MAX);
        hub.deliver(Event::Direct(message(2)));
        match rx1.try_recv().unwrap() {
            Outgoing::Direct(_, receipt) => receipt.settle(),
            _ => panic!("expected a direct frame"),
        }
        drop(rx2);
        assert!(undelivered.try_recv().is_err());
    }

    #[test]
    fn full_outbox_closes_the_connection() {
        let (hub, _undelivered) = Hub::new();
        let (tx, _rx) = queue(1);
        let closer = tx.closer().clone();
        hub.register(2, "a", here(), tx, Arc::default(), usize::MAX);
        let text = || Event::Text {
            text: "x".into(),
            audience: Audience::AllExcept(1),
        };
        hub.deliver(text());
        assert!(!closer.token().is_cancelled());
        hub.deliver(text());
        assert_eq!(closer.reason(), Disconnect::TooSlow);
    }

    #[tokio::test]
    async fn replies_wait_for_room_in_frames_but_not_in_bytes() {
        let closer = Closer::default();
        let (outbox, mut inbox) = outbox(1, 10, closer.clone());
        let frame = |n: usize| Outgoing::Text(Utf8Bytes::from("x".repeat(n)));
        assert!(outbox.send(frame(4)).await);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(frame(4)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one frame fills the queue");
        assert!(inbox.recv().await.is_some());
        assert!(waiting.await.unwrap(), "queued once there was room");
        assert!(inbox.recv().await.is_some());
        inbox.settle();
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
            let (outbox, _inbox) = queue(1);
            for _ in 0..5 {
                outbox.offer(Outgoing::Text(Utf8Bytes::from("x")));
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
    fn an_address_holds_at_most_its_share() {
        let (hub, _undelivered) = Hub::new();
        let first = hub
            .register(1, "a", here(), queue(1).0, Arc::default(), 2)
            .unwrap();
        hub.register(2, "b", here(), queue(1).0, Arc::default(), 2)
            .unwrap();
        assert!(
            hub.register(3, "c", here(), queue(1).0, Arc::default(), 2)
                .is_none()
        );
        hub.unregister(1, first.id);
        assert!(
            hub.register(3, "c", here(), queue(1).0, Arc::default(), 2)
                .is_some()
        );
    }

    #[test]
    fn an_outbox_is_bounded_in_bytes_too() {
        let closer = Closer::default();
        let (outbox, mut inbox) = outbox(100, 10, closer.clone());
        let frame = |n: usize| Outgoing::Text(Utf8Bytes::from("x".repeat(n)));
        assert!(outbox.offer(frame(6)));
        assert!(outbox.offer(frame(4)));
        assert!(!closer.token().is_cancelled());
        assert!(inbox.try_recv().is_some());
        inbox.settle();
        assert!(outbox.offer(frame(6)));
        assert!(!outbox.offer(frame(1)), "11 bytes would be queued");
        assert_eq!(closer.reason(), Disconnect::TooSlow);
    }

    #[test]
    fn revoking_closes_only_that_token() {
        let (hub, _undelivered) = Hub::new();
        let ((a, _), (b, _)) = (queue(1), queue(1));
        let (a_closer, b_closer) = (a.closer().clone(), b.closer().clone());
        hub.register(2, "a", here(), a, Arc::default(), usize::MAX);
        hub.register(2, "b", here(), b, Arc::default(), usize::MAX);
        hub.deliver(Event::CloseSessions {
            user: 2,
            sessions: Sessions::Of("a".into()),
        });
        assert_eq!(a_closer.reason(), Disconnect::TokenRevoked);
        assert!(!b_closer.token().is_cancelled());
    }

    #[test]
    fn closing_all_but_one_token_keeps_that_one_and_follows_renewals() {
        let (hub, _undelivered) = Hub::new();
        let ((a, _), (b, _), (c, _)) = (queue(1), queue(1), queue(1));
        let closers = [a.closer().clone(), b.closer().clone(), c.closer().clone()];
        hub.register(2, "a", here(), a, Arc::default(), usize::MAX);
        let renewed = hub
            .register(2, "b", here(), b, Arc::default(), usize::MAX)
            .unwrap();
        hub.register(2, "c", here(), c, Arc::default(), usize::MAX);
        hub.rebind(2, renewed.id, "c");
        hub.deliver(Event::CloseSessions {
            user: 2,
            sessions: Sessions::AllBut(Some("c".into())),
        });
        let closed = closers.each_ref().map(|c| c.token().is_cancelled());
        assert_eq!(closed, [true, false, false]);
        hub.deliver(Event::CloseSessions {
            user: 2,
            sessions: Sessions::AllBut(None),
        });
        assert!(closers.iter().all(|c| c.token().is_cancelled()));
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::Delivery;

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
