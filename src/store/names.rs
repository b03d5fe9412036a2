//! Who a username names, remembered in process.
//!
//! Usernames never change and users are never deleted, so a name once resolved
//! stays right for the life of the process; names not found are not remembered
//! (they may be registered a moment later). This takes the store off the path
//! of every directed message.

use std::{collections::HashMap, sync::Arc, sync::RwLock};

use super::{Store, StoreResult, UserId};
use crate::domain::Username;

/// Names remembered at most; past this the cache starts over.
const CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Named {
    pub id: UserId,
    /// As registered.
    pub username: Arc<str>,
}

#[derive(Default)]
pub struct NameCache {
    names: RwLock<HashMap<String, Named>>,
}

impl NameCache {
    /// The user a client named, in any case.
    pub async fn resolve(&self, store: &dyn Store, name: &str) -> StoreResult<Option<Named>> {
        let Some(key) = Username::lookup_key(name) else {
            return Ok(None);
        };
        if let Some(hit) = self
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(hit.clone()));
        }
        let Some(user) = store.user_by_username(&key).await? else {
            return Ok(None);
        };
        let named = Named {
            id: user.id,
            username: user.username.into(),
        };
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        if names.len() >= CAPACITY {
            names.clear();
        }
        names.insert(key, named.clone());
        Ok(Some(named))
    }
}
