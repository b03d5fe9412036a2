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

use std::{collections::HashMap, sync::Mutex, time::Duration};

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

/// Ids are remembered as bitmaps of this many consecutive ids: ids come
/// from one sequence (blocks of it per replica), so the messages a replica
/// receives in a few seconds fill a handful of them; one remembered id costs
/// a bit rather than a hash-set entry.
const CHUNK: i64 = 8_192;

/// Most bitmaps a replica keeps (1 KiB each), whatever the rate: beyond, the
/// least recently used are forgotten.
const MOST_CHUNKS: usize = 1_024;

/// A map on a per-message path, hashed fast: its keys (ids, channels, nodes)
/// are the replicas' own, never chosen by clients.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
    /// By id / [`CHUNK`]: which of those ids arrived, and when one last did.
    chunks: FastMap<i64, Chunk>,
    /// When chunks were last looked through for ones to forget.
    swept: Option<Instant>,
    /// Nothing is forgotten while the subscription is lost, nor until this
    /// instant after.
    kept: Kept,
}

struct Chunk {
    arrived: Box<[u64; CHUNK as usize / 64]>,
    last: Instant,
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
        let chunk = state
            .chunks
            .entry(id.div_euclid(CHUNK))
            .or_insert_with(|| Chunk {
                arrived: Box::new([0; CHUNK as usize / 64]),
                last: now,
            });
        let bit = id.rem_euclid(CHUNK) as usize;
        let (word, mask) = (&mut chunk.arrived[bit / 64], 1u64 << (bit % 64));
        if *word & mask != 0 {
            return false;
        }
        *word |= mask;
        chunk.last = now;
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
    /// Forgets the chunks no id arrived in for [`REMEMBERED`] (unless all is
    /// kept), and the least recently used beyond [`MOST_CHUNKS`]; looked
    /// through at most every tenth of a second. An id is remembered at least
    /// [`REMEMBERED`], longer while others of its chunk arrive.
    fn forget(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|swept| now.duration_since(swept) < Duration::from_millis(100))
        {
            return;
        }
        self.swept = Some(now);
        let keep_all = match self.kept {
            Kept::ForAWhile => false,
            Kept::WhileLost => true,
            Kept::Until(until) if now < until => true,
            Kept::Until(_) => {
                self.kept = Kept::ForAWhile;
                false
            }
        };
        if !keep_all {
            self.chunks
                .retain(|_, chunk| now.duration_since(chunk.last) <= REMEMBERED);
        }
        if self.chunks.len() > MOST_CHUNKS {
            let mut by_use: Vec<(Instant, i64)> =
                self.chunks.iter().map(|(&k, c)| (c.last, k)).collect();
            by_use.sort_unstable();
            for (_, k) in &by_use[..self.chunks.len() - MOST_CHUNKS] {
                self.chunks.remove(k);
            }
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

    #[tokio::test(start_paused = true)]
    async fn ids_far_apart_are_remembered_up_to_a_bound_the_latest_first() {
        let arrivals = Arrivals::default();
        let far_apart = |i: i64| i * CHUNK + 5;
        for i in 0..MOST_CHUNKS as i64 + 10 {
            assert!(arrivals.first(far_apart(i)));
            tokio::time::advance(Duration::from_micros(10)).await;
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        // The next arrival looks through them: the oldest ten go.
        assert!(arrivals.first(-1));
        assert_eq!(
            arrivals.state().chunks.len(),
            MOST_CHUNKS + 1,
            "and the new one's"
        );
        assert!(!arrivals.first(far_apart(MOST_CHUNKS as i64 + 9)));
        assert!(arrivals.first(far_apart(0)), "the oldest forgotten");
    }
}
