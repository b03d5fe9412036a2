//! What a viewer may see of other users' presence.

use std::{collections::HashSet, sync::Arc};

use super::error::Result;
use crate::{
    config::Visibility,
    domain::UserId,
    presence::Presence,
    store::{Store, StoreError, User},
};

/// Others' presence as one viewer may see it, under the visibility setting.
pub struct PresenceView {
    pub store: Arc<dyn Store>,
    pub presence: Arc<dyn Presence>,
    pub visibility: Visibility,
}

impl PresenceView {
    /// Pairs each item with what `viewer` may see of the user it names:
    /// whether it is online and whether it accepted the viewer as a contact.
    /// Under `contacts` visibility, a user that has not accepted the viewer
    /// shows as offline and never seen (its `last_seen` is cleared). One
    /// presence round trip and one store query, whatever the number of items.
    pub async fn with_presence<T>(
        &self,
        viewer: UserId,
        mut items: Vec<T>,
        user_of: impl Fn(&mut T) -> &mut User,
    ) -> Result<Vec<(T, Seen)>> {
        let ids: Vec<UserId> = items.iter_mut().map(|item| user_of(item).id).collect();
        let consenting = async {
            if ids.is_empty() {
                return Ok(HashSet::new());
            }
            let consenting = self.store.consenting(viewer, &ids).await?;
            Ok::<_, StoreError>(consenting.into_iter().collect::<HashSet<_>>())
        };
        let (online, consenting) = tokio::join!(self.presence.locate(&ids), consenting);
        let (online, consenting) = (online?, consenting?);
        Ok(items
            .into_iter()
            .zip(online)
            .map(|(mut item, at)| {
                let user = user_of(&mut item);
                let consents = consenting.contains(&user.id);
                let shown = self.visibility == Visibility::Open || consents;
                if !shown {
                    user.last_seen = None;
                }
                let seen = Seen {
                    online: shown && at.is_some(),
                    consents,
                };
                (item, seen)
            })
            .collect())
    }
}

/// What a viewer may see of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Online, and the viewer may see it.
    pub online: bool,
    /// It accepted the viewer as a contact.
    pub consents: bool,
}
