//! Whether a recipient has accepted a sender as a contact on its own side
//! (one-sided consent), asked for every directed message: a sender the
//! recipient has not accepted must not learn from the relay's answers whether
//! the recipient is online. Kept in process for a few seconds, so that the
//! relay's hot path costs no store read; a change made through this replica is
//! seen at once, one made through another within [`TIME_TO_LIVE`].

use std::time::Duration;

use moka::sync::Cache;

use crate::{
    domain::UserId,
    store::{Store, StoreResult},
};

/// How long an answer is kept.
pub const TIME_TO_LIVE: Duration = Duration::from_secs(10);

/// Pairs remembered at most.
const CAPACITY: u64 = 1_000_000;

pub struct ConsentCache {
    /// `(recipient, sender)` → whether the recipient accepted the sender.
    pairs: Cache<(UserId, UserId), bool>,
}

impl Default for ConsentCache {
    fn default() -> Self {
        Self {
            pairs: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TIME_TO_LIVE)
                .build(),
        }
    }
}

impl ConsentCache {
    /// Whether `recipient` has accepted `sender`.
    pub async fn accepts(
        &self,
        store: &dyn Store,
        recipient: UserId,
        sender: UserId,
    ) -> StoreResult<bool> {
        if let Some(accepted) = self.pairs.get(&(recipient, sender)) {
            return Ok(accepted);
        }
        let accepted = !store.consenting(sender, &[recipient]).await?.is_empty();
        self.pairs.insert((recipient, sender), accepted);
        Ok(accepted)
    }

    /// The relation of `a` and `b` changed: asked again next time.
    pub fn forget(&self, a: UserId, b: UserId) {
        self.pairs.invalidate(&(a, b));
        self.pairs.invalidate(&(b, a));
    }
}
