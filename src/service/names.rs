//! Who a username names, remembered in process.
//!
//! Usernames never change, so a name once resolved stays right until its
//! account is deleted. This replica forgets a deleted account's name at once;
//! others hold it at most [`TIME_TO_LIVE`], well within the time a deleted
//! name stays unavailable, so that a name is never resolved to an account
//! that is gone once someone else may hold it (meanwhile, what is sent to the
//! old id finds no user and is refused like any unknown recipient). Names not
//! found are not remembered (they may be registered a moment later). This
//! takes the store off the path of every directed message and token check.

use std::{sync::Arc, time::Duration};

use moka::sync::Cache;

use crate::{
    domain::{UserId, Username},
    store::{Store, StoreResult},
};

/// Names remembered at most; the least used go first.
const CAPACITY: u64 = 100_000;

/// How long a name is remembered; the shortest time a deleted account's name
/// may be kept from others is longer.
pub const TIME_TO_LIVE: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone)]
pub struct Named {
    pub id: UserId,
    /// As registered.
    pub username: Arc<str>,
}

pub struct NameCache {
    names: Cache<String, Named>,
}

impl Default for NameCache {
    fn default() -> Self {
        Self {
            names: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TIME_TO_LIVE)
                .build(),
        }
    }
}

impl NameCache {
    /// The user a client named, in any case.
    pub async fn resolve(&self, store: &dyn Store, name: &str) -> StoreResult<Option<Named>> {
        let Some(key) = Username::lookup_key(name) else {
            return Ok(None);
        };
        if let Some(hit) = self.names.get(&key) {
            return Ok(Some(hit));
        }
        let Some(user) = store.user_by_username(&key).await? else {
            return Ok(None);
        };
        Ok(Some(self.remember(user.id, &user.username)))
    }

    /// Remembers a user whose name and id are known already (it just logged in).
    pub fn remember(&self, id: UserId, username: &str) -> Named {
        let named = Named {
            id,
            username: username.into(),
        };
        if let Some(key) = Username::lookup_key(username) {
            self.names.insert(key, named.clone());
        }
        named
    }

    /// The account of `username` was deleted.
    pub fn forget(&self, username: &str) {
        if let Some(key) = Username::lookup_key(username) {
            self.names.invalidate(&key);
        }
    }
}
