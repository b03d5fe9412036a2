//! The online-contacts panel: which of a user's contacts are online, and where.
//!
//! Clients poll it, so it must not read the store every time. Each viewer's
//! visible contacts (id, name and key) are kept in process with the version of
//! the viewer's contact list they were read under; a contact that publishes a
//! new key or deletes its account changes the version of every list it is on.
//! The presence backend answers the current version in the same round trip that
//! locates the contacts, so a list changed through any replica is read again at
//! once; and presence records `last_seen` at the instant the store does, so an
//! answer needs no store read at all.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use moka::sync::Cache;

use super::error::Result;
use crate::{
    config::Visibility,
    domain::UserId,
    metrics::{self, ContactList},
    presence::{ContactsVersion, Presence, Sighting},
    store::Store,
};

/// Bytes of contact lists kept at most, over all viewers.
const CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// A list is read again after this long even if its version never changed: the
/// bound on staleness should a version change be lost (Redis failing between a
/// contact change and its version bump).
const MAX_AGE: Duration = Duration::from_secs(60);

/// What the panel shows of a contact besides where it is.
#[derive(Debug)]
pub struct Card {
    pub id: UserId,
    pub username: String,
    pub public_key: String,
    /// The view's rendering of what does not change while the card is
    /// cached, made at its first answer: clients poll the panel, and
    /// escaping the same names and keys into JSON at every poll was most of
    /// an answer's cost.
    pub rendered: OnceLock<Box<str>>,
}

struct Listed {
    version: ContactsVersion,
    cards: Vec<Card>,
}

impl Listed {
    fn ids(&self) -> Vec<UserId> {
        self.cards.iter().map(|c| c.id).collect()
    }

    /// Roughly the bytes the entry holds, for the cache's bound.
    fn weight(&self) -> u32 {
        let bytes: usize = self
            .cards
            .iter()
            .map(|c| 64 + c.username.len() + c.public_key.len())
            .sum();
        u32::try_from(bytes + 64).unwrap_or(u32::MAX)
    }
}

/// A viewer's contacts that are online now, in the order of its contact list
/// (by name).
pub struct Online {
    list: Arc<Listed>,
    sightings: Vec<Option<Sighting>>,
}

impl Online {
    pub fn iter(&self) -> impl Iterator<Item = (&Card, Sighting)> + Clone {
        self.list
            .cards
            .iter()
            .zip(&self.sightings)
            .filter_map(|(card, seen)| Some((card, (*seen)?)))
    }
}

pub struct OnlineContacts {
    lists: Cache<UserId, Arc<Listed>>,
}

impl Default for OnlineContacts {
    fn default() -> Self {
        Self {
            lists: Cache::builder()
                .max_capacity(CAPACITY_BYTES)
                .weigher(|_, list: &Arc<Listed>| list.weight())
                .time_to_live(MAX_AGE)
                .build(),
        }
    }
}

impl OnlineContacts {
    /// `viewer`'s contacts that are online and whose address it may see: one
    /// presence round trip while its cached list is current; otherwise the
    /// version, one store query, and the look-up.
    pub async fn of(
        &self,
        store: &dyn Store,
        presence: &dyn Presence,
        viewer: UserId,
        visibility: Visibility,
    ) -> Result<Online> {
        let mut read = ContactList::Uncached;
        if let Some(list) = self.lists.get(&viewer) {
            let (version, sightings) = presence.locate_contacts(viewer, &list.ids()).await?;
            if version == list.version {
                metrics::online_panel_read(ContactList::Cached);
                return Ok(Online { list, sightings });
            }
            read = ContactList::Changed;
        }
        metrics::online_panel_read(read);
        // The version is read before the list, so that a change racing with the
        // read leaves the entry under an old version, to be read again next time.
        let (version, _) = presence.locate_contacts(viewer, &[]).await?;
        let cards: Vec<Card> = store
            .visible_contacts(viewer, visibility)
            .await?
            .into_iter()
            .map(|u| Card {
                id: u.id,
                username: u.username,
                public_key: u.public_key,
                rendered: OnceLock::new(),
            })
            .collect();
        let list = Arc::new(Listed { version, cards });
        self.lists.insert(viewer, list.clone());
        let sightings = presence.locate(&list.ids()).await?;
        Ok(Online { list, sightings })
    }
}
