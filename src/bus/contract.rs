//! Behaviour every fan-out backend must show, against a recording sink that
//! plays the replica's hub. Each backend's tests build a bus on a fresh
//! [`Recorder`] and run every function here.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;

use super::{Audience, Bus, Event, EventSink, Sessions};
use crate::domain::{DirectMessage, UserId};

/// A hub stand-in: holds connections of the users it is told to, and records
/// what reaches it.
#[derive(Default)]
pub struct Recorder {
    held: Mutex<HashSet<UserId>>,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn hold(&self, user: UserId, held: bool) {
        let mut users = self.held.lock().unwrap();
        if held {
            users.insert(user);
        } else {
            users.remove(&user);
        }
    }

    fn received(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (generously: a busy machine) until `event` has arrived.
    async fn arrives(&self, event: &Event) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.received().contains(event) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{event:?} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl EventSink for Recorder {
    fn deliver(&self, event: Event) -> bool {
        if let Event::Direct(m) = &event
            && !self.holds(m.recipient_id)
        {
            return false;
        }
        self.events.lock().unwrap().push(event);
        true
    }

    fn undeliverable(&self, _message: Arc<DirectMessage>) {}

    fn local_users(&self) -> Vec<UserId> {
        self.held.lock().unwrap().iter().copied().collect()
    }

    fn holds(&self, user: UserId) -> bool {
        self.held.lock().unwrap().contains(&user)
    }

    fn resumed(&self) {}
}

/// A directed message with an id of its own, as every message has (a
/// replica drops one whose id reached it before).
fn direct(to: UserId, content: &str) -> Event {
    static NEXT_ID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
    Event::Direct(Arc::new(DirectMessage {
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        receipt: false,
        ephemeral: false,
        sender_id: 1,
        sender_username: "alice".into(),
        recipient_id: to,
        content: content.into(),
        sent_at: Utc::now(),
    }))
}

/// A directed message reaches a user held here, and is refused for one held
/// nowhere.
pub async fn direct_reaches_only_held_users(bus: &dyn Bus, sink: &Recorder) {
    bus.ping().await.unwrap();
    sink.hold(2, true);
    bus.attach(2).await.unwrap();
    let to_held = direct(2, "hi");
    assert!(bus.publish(to_held.clone()).await.unwrap());
    sink.arrives(&to_held).await;
    let to_nobody = direct(3, "anyone?");
    assert!(!bus.publish(to_nobody.clone()).await.unwrap());
    // Another event published after it arrives after it: the refused one never came.
    let marker = direct(2, "marker");
    bus.publish(marker.clone()).await.unwrap();
    sink.arrives(&marker).await;
    assert!(!sink.received().contains(&to_nobody));
}

/// Broadcasts, notices and session closes reach the replica.
pub async fn text_and_closes_reach_the_replica(bus: &dyn Bus, sink: &Recorder) {
    sink.hold(2, true);
    bus.attach(2).await.unwrap();
    let text = Event::Text {
        text: "alice: hello".into(),
        audience: Audience::AllExcept(1),
    };
    bus.publish(text.clone()).await.unwrap();
    sink.arrives(&text).await;
    let notice = Event::Text {
        text: "系统消息: 用户 alice 已上线。".into(),
        audience: Audience::Users(vec![2, 5]),
    };
    bus.publish(notice.clone()).await.unwrap();
    sink.arrives(&notice).await;
    for sessions in [Sessions::Of("t".into()), Sessions::AllBut(Some("t".into()))] {
        let close = Event::CloseSessions { user: 2, sessions };
        bus.publish(close.clone()).await.unwrap();
        sink.arrives(&close).await;
    }
    for event in [
        Event::Delivered {
            sender: 2,
            ids: vec![7, 9],
        },
        Event::Unread { user: 2 },
    ] {
        bus.publish(event.clone()).await.unwrap();
        sink.arrives(&event).await;
    }
}

/// Once the replica lets a user go, directed messages to it are refused.
pub async fn detached_users_are_not_reached(bus: &dyn Bus, sink: &Recorder) {
    sink.hold(2, true);
    bus.attach(2).await.unwrap();
    let before = direct(2, "before");
    assert!(bus.publish(before.clone()).await.unwrap());
    sink.arrives(&before).await;
    sink.hold(2, false);
    bus.detach(2).await.unwrap();
    assert!(!bus.publish(direct(2, "after")).await.unwrap());
}

/// Events queued one after another before any is answered (a connection's
/// messages sharing a round trip) arrive in that order, and each gets its
/// own answer.
pub async fn queued_events_arrive_in_order_each_answered(bus: &dyn Bus, sink: &Recorder) {
    sink.hold(2, true);
    bus.attach(2).await.unwrap();
    // Every fifth to a user held nowhere.
    let events: Vec<Event> = (0..20)
        .map(|i| direct(if i % 5 == 4 { 3 } else { 2 }, &format!("m{i}")))
        .collect();
    let mut answers = Vec::new();
    for event in &events {
        answers.push(bus.queue(event.clone()).await);
    }
    let to_held = |event: &&Event| matches!(event, Event::Direct(m) if m.recipient_id == 2);
    for (event, answer) in events.iter().zip(answers) {
        assert_eq!(answer.await.unwrap(), to_held(&event), "{event:?}");
    }
    let held: Vec<Event> = events.iter().filter(to_held).cloned().collect();
    sink.arrives(held.last().unwrap()).await;
    assert_eq!(sink.received(), held);
}
