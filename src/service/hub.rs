//! This replica's open WebSockets, by user, and delivery to them.
//!
//! Delivery never waits on a client: each connection has a bounded outbox, and a
//! connection whose outbox is full is closed as too slow. A directed message that
//! no connection of its recipient managed to write (nor stored, for a
//! connection that acknowledges) is handed back, through its [`Receipt`], to be
//! stored as an offline message, so nothing is lost.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

use crate::{
    bus::{Audience, Event, EventSink, Sessions},
    connection::{Delivery, Outbox, Outgoing, Receipt},
    domain::{Arrival, DirectMessage, Disconnect, Endpoint, ServerFrame, UserId, client_group},
    presence,
};

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
        if self.delivery.queue_fetch() && !self.outbox.offer(Outgoing::Fetch) {
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
        crate::metrics::delivery_latency(message.id, message.sent_at);
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
                    ephemeral: message.ephemeral,
                }
                .to_text(),
            )
        };
        if message.ephemeral {
            // Written where it can be, and forgotten: no id, no receipt, no
            // storing, whatever becomes of it.
            let frame = frame(None);
            for conn in targets {
                conn.outbox.offer(Outgoing::text(frame.clone()));
            }
            crate::metrics::relayed(crate::metrics::Relay::Direct, targets.len());
            return true;
        }
        let receipt = Arc::new(Receipt::new(message.clone(), self.undelivered.clone()));
        for conn in targets {
            let item = if conn.manual_ack {
                let frame = tracked.get_or_insert_with(|| frame(Some(message.id)));
                Outgoing::direct(frame.clone(), receipt.clone())
            } else {
                let frame = plain.get_or_insert_with(|| frame(None));
                Outgoing::direct(frame.clone(), receipt.clone())
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
                conn.outbox.offer(Outgoing::text(frame.clone()));
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
        for conn in conns.iter().filter(|c| c.delivery.wants_receipts()) {
            for frame in &frames {
                conn.outbox.offer(Outgoing::text(frame.clone()));
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
        // An ephemeral message is for open connections only: never stored.
        if !message.ephemeral {
            let _ = self.undelivered.send(message);
        }
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
    use crate::connection::{Closer, OutboxReader, outbox};

    fn queue(frames: usize) -> (Outbox, OutboxReader) {
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
            ephemeral: false,
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
            Outgoing::Frame(_, Some(receipt)) => receipt.settle(),
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
