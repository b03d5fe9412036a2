//! What a viewer may see of other users' presence.

use std::{collections::HashSet, sync::Arc};

use super::error::Result;
use crate::{
    config::Visibility,
    domain::UserId,
    presence::Presence,
    store::{Store, User},
};

/// Others' presence as one viewer may see it, under the visibility setting.
pub struct PresenceView {
    pub store: Arc<dyn Store>,
    pub presence: Arc<dyn Presence>,
    pub visibility: Visibility,
}

impl PresenceView {
    /// Pairs each item with whether the user it names is online, as `viewer`
    /// may see it: under `contacts` visibility, a user that has not accepted
    /// the viewer shows as offline and never seen (its `last_seen` is
    /// cleared). One presence round trip and, under `contacts`, one store
    /// query, whatever the number of items.
    pub async fn with_presence<T>(
        &self,
        viewer: UserId,
        mut items: Vec<T>,
        user_of: impl Fn(&mut T) -> &mut User,
    ) -> Result<Vec<(T, bool)>> {
        let ids: Vec<UserId> = items.iter_mut().map(|item| user_of(item).id).collect();
        let consenting = async {
            match self.visibility {
                Visibility::Open => Ok(None),
                Visibility::Contacts if ids.is_empty() => Ok(Some(HashSet::new())),
                Visibility::Contacts => self
                    .store
                    .consenting(viewer, &ids)
                    .await
                    .map(|ids| Some(ids.into_iter().collect::<HashSet<_>>())),
            }
        };
        let (online, consenting) = tokio::join!(self.presence.locate(&ids), consenting);
        let (online, consenting) = (online?, consenting?);
        Ok(items
            .into_iter()
            .zip(online)
            .map(|(mut item, at)| {
                let user = user_of(&mut item);
                let shown = consenting.as_ref().is_none_or(|c| c.contains(&user.id));
                if !shown {
                    user.last_seen = None;
                }
                (item, shown && at.is_some())
            })
            .collect())
    }
}
