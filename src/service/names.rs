//! Who a username names, remembered in process.
//!
//! Usernames never change and users are never deleted, so a name once resolved
//! stays right for the life of the process; names not found are not remembered
//! (they may be registered a moment later). This takes the store off the path
//! of every directed message and every token check.

use std::sync::Arc;

use moka::sync::Cache;

use crate::{
    domain::{UserId, Username},
    store::{Store, StoreResult},
};

/// Names remembered at most; the least used go first.
const CAPACITY: u64 = 100_000;

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
            names: Cache::new(CAPACITY),
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
        self.names.insert(username.to_lowercase(), named.clone());
        named
    }
}
