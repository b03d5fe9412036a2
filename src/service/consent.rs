//! Whether a recipient has accepted a sender as a contact on its own side
//! (one-sided consent), asked for every directed message: a sender the
//! recipient has not accepted must not learn from the relay's answers whether
//! the recipient is online. Kept in process for a few seconds, so that the
//! relay's hot path costs no store read (a concurrent map read, about as
//! cheap as a lookup gets: moka's bookkeeping cost ws-direct 10% more CPU per
//! message); a change made through this replica is seen at once, one made
//! through another within [`TIME_TO_LIVE`].

use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::{
    domain::UserId,
    store::{Store, StoreResult},
};

/// How long an answer is kept.
pub const TIME_TO_LIVE: Duration = Duration::from_secs(10);

/// Pairs remembered at most; beyond it the map starts again empty.
const CAPACITY: usize = 1_000_000;

#[derive(Default)]
pub struct ConsentCache {
    /// `(recipient, sender)` → whether the recipient accepted the sender,
    /// and until when that answer holds.
    pairs: DashMap<(UserId, UserId), (bool, Instant)>,
}

impl ConsentCache {
    /// Whether `recipient` has accepted `sender`.
    pub async fn accepts(
        &self,
        store: &dyn Store,
        recipient: UserId,
        sender: UserId,
    ) -> StoreResult<bool> {
        let now = Instant::now();
        if let Some(entry) = self.pairs.get(&(recipient, sender))
            && entry.1 > now
        {
            return Ok(entry.0);
        }
        let accepted = !store.consenting(sender, &[recipient]).await?.is_empty();
        if self.pairs.len() >= CAPACITY {
            self.pairs.clear();
        }
        self.pairs
            .insert((recipient, sender), (accepted, now + TIME_TO_LIVE));
        Ok(accepted)
    }

    /// The relation of `a` and `b` changed: asked again next time.
    pub fn forget(&self, a: UserId, b: UserId) {
        self.pairs.remove(&(a, b));
        self.pairs.remove(&(b, a));
    }
}
