//! Directed messages a Redis outage may have swallowed, published again.
//!
//! Redis answers a `PUBLISH` with the number of subscribers it queued the
//! message for, before it writes the message to them: writes to clients go out
//! together at the end of each turn of its event loop, the publisher's answer
//! first. A Redis killed (or stalled, then killed) between the two has told the
//! sender "delivered" for a message no replica will ever receive, and the sender
//! has told its client `sent`. Only the last answers before an outage can be
//! such: an answer to anything sent after a message's answer came back means
//! that Redis finished that turn, writes and all.
//!
//! So the sender keeps, per node, the directed messages of its last answer
//! ([`Unconfirmed`]) and, when its subscription to that Redis is lost, publishes
//! them again once it is back. A replica that did receive one the first time
//! must not deliver it twice: each replica remembers the ids of the directed
//! messages it received lately, and past a loss until a while after it is
//! subscribed again ([`Arrivals`]), and drops a message that comes again.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use super::REDIS_TIMEOUT;

/// A message as published: its channel and its payload.
pub type Published = (String, Vec<u8>);

/// An answer older than this when the subscription is lost was written out
/// long before: not published again.
pub const SUSPECT_AGE: Duration = REDIS_TIMEOUT;

/// How long a replica remembers a message it received: past the oldest one
/// a sender publishes again.
const REMEMBERED: Duration = Duration::from_secs(SUSPECT_AGE.as_secs() + 1);

/// After the subscription is back, how long what arrived before the loss is
/// still remembered: every sender must have published again by then (each
/// reconnects within seconds; one that finds no subscriber retries for
/// [`RESEND_FOR`]).
const REMEMBERED_AFTER_LOSS: Duration = Duration::from_secs(30);

/// How long a message published again waits for a subscriber (its
/// recipient's replica may be subscribing again itself) before it is stored.
pub const RESEND_FOR: Duration = Duration::from_secs(10);

/// Most ids a replica remembers, whatever the rate (8 bytes each, and the
/// set's): beyond, the oldest are forgotten.
const MOST_REMEMBERED: usize = 1 << 20;

/// The sender's side: its last answered directed messages, per node.
#[derive(Default)]
pub struct Unconfirmed {
    state: Mutex<Sent>,
}

#[derive(Default)]
struct Sent {
    /// Per node (a slot tag on a cluster; one key on one node): the directed
    /// messages of the last answer from it, and when it came.
    last: HashMap<String, (Instant, Vec<Published>)>,
    /// To publish again once subscribed again.
    again: Vec<Published>,
    /// The subscription is lost: an answer now may come from a Redis about to
    /// go, or from a new master with few subscribers yet; it is published
    /// again too.
    lost: bool,
}

impl Unconfirmed {
    fn state(&self) -> std::sync::MutexGuard<'_, Sent> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Redis `node` answered a batch, with `delivered` its directed messages
    /// counted by some replica: the previous answer from `node` is confirmed.
    pub fn answered(&self, node: &str, delivered: Vec<Published>) {
        let mut state = self.state();
        if state.lost {
            state.again.extend(delivered);
        } else if delivered.is_empty() {
            state.last.remove(node);
        } else {
            state
                .last
                .insert(node.to_owned(), (Instant::now(), delivered));
        }
    }

    /// The subscription was lost: the recent unconfirmed answers are to be
    /// published again.
    pub fn lost(&self) {
        let mut state = self.state();
        state.lost = true;
        let Sent { last, again, .. } = &mut *state;
        for (answered, messages) in last.drain().map(|(_, last)| last) {
            if answered.elapsed() <= SUSPECT_AGE {
                again.extend(messages);
            }
        }
    }

    /// Subscribed again: what to publish again.
    pub fn resumed(&self) -> Vec<Published> {
        let mut state = self.state();
        state.lost = false;
        std::mem::take(&mut state.again)
    }
}

/// The receiving side: ids of the directed messages received lately.
#[derive(Default)]
pub struct Arrivals {
    state: Mutex<Received>,
}

#[derive(Default)]
struct Received {
    /// Ids in order of arrival, in buckets of a tenth of a second.
    order: VecDeque<(Instant, Vec<i64>)>,
    ids: HashSet<i64>,
    /// Nothing is forgotten while the subscription is lost, nor until this
    /// instant after.
    kept: Kept,
}

#[derive(Default)]
enum Kept {
    #[default]
    ForAWhile,
    WhileLost,
    Until(Instant),
}

impl Arrivals {
    fn state(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a directed message's arrival; false when it arrived before
    /// (published again after an outage): not to be delivered again.
    pub fn first(&self, id: i64) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        state.forget(now);
        if !state.ids.insert(id) {
            return false;
        }
        match state.order.back_mut() {
            Some((since, ids)) if now.duration_since(*since) < Duration::from_millis(100) => {
                ids.push(id)
            }
            _ => state.order.push_back((now, vec![id])),
        }
        true
    }

    /// The subscription is lost: nothing received is forgotten until
    /// [`REMEMBERED_AFTER_LOSS`] after it is back.
    pub fn lost(&self) {
        self.state().kept = Kept::WhileLost;
    }

    pub fn resumed(&self) {
        self.state().kept = Kept::Until(Instant::now() + REMEMBERED_AFTER_LOSS);
    }
}

impl Received {
    fn forget(&mut self, now: Instant) {
        let keep_all = match self.kept {
            Kept::ForAWhile => false,
            Kept::WhileLost => true,
            Kept::Until(until) if now < until => true,
            Kept::Until(_) => {
                self.kept = Kept::ForAWhile;
                false
            }
        };
        while let Some((since, ids)) = self.order.front() {
            let too_many = self.ids.len() >= MOST_REMEMBERED;
            if !too_many && (keep_all || now.duration_since(*since) <= REMEMBERED) {
                break;
            }
            for id in ids {
                self.ids.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(n: u8) -> Published {
        (format!("channel {n}"), vec![n])
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_nodes_last_recent_answers_are_published_again() {
        let sent = Unconfirmed::default();
        // Written out long before the loss.
        sent.answered("old", vec![published(6)]);
        tokio::time::advance(SUSPECT_AGE + Duration::from_millis(1)).await;
        sent.answered("a", vec![published(1), published(2)]);
        // A later answer from the same node confirms the earlier one.
        sent.answered("a", vec![published(3)]);
        sent.answered("b", vec![published(4)]);
        sent.answered("c", vec![published(5)]);
        sent.answered("c", Vec::new());
        sent.answered("d", vec![published(7)]);
        sent.lost();
        // Answered while the subscription is lost: published again too.
        sent.answered("a", vec![published(8)]);
        let mut again = sent.resumed();
        again.sort();
        assert_eq!(
            again,
            vec![published(3), published(4), published(7), published(8)]
        );
        // Then as before.
        sent.answered("a", vec![published(9)]);
        assert!(sent.resumed().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_arriving_again_is_dropped_however_long_the_outage() {
        let arrivals = Arrivals::default();
        assert!(arrivals.first(1));
        assert!(!arrivals.first(1), "the same id twice");
        arrivals.lost();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(arrivals.first(2));
        arrivals.resumed();
        tokio::time::advance(REMEMBERED_AFTER_LOSS - Duration::from_secs(1)).await;
        assert!(
            !arrivals.first(1),
            "remembered through the outage and after"
        );
        assert!(!arrivals.first(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(arrivals.first(1), "forgotten once the grace is over");
        tokio::time::advance(REMEMBERED + Duration::from_millis(200)).await;
        assert!(arrivals.first(1), "and in steady state after its time");
    }
}
