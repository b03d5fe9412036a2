//! Contacts and friend requests, with the presence each answer shows.

use std::sync::Arc;

use super::{
    authn::AuthUser,
    budget::spend,
    consent::ConsentCache,
    error::{Error, Result},
    names::NameCache,
    online::{Online, OnlineContacts},
    visible::{PresenceView, Seen},
};
use crate::{
    bus::{Audience, Bus, Event},
    config::Visibility,
    domain::{ContactCard, Endpoint, ServerFrame, UserId, Username},
    presence::Presence,
    ratelimit::{Limit, Limiter},
    store::{Contact, Store, StoreError, User},
};

/// Whom a new contact names: the seed's username or the revision's id.
pub enum ContactTarget {
    Name(String),
    Id(UserId),
}

/// The contacts flow.
pub struct Contacts {
    /// Contacts and requests.
    pub(super) store: Arc<dyn Store>,
    /// Where contacts are, and telling every replica a list changed.
    pub(super) presence: Arc<dyn Presence>,
    /// The contact-change budget.
    pub(super) limiter: Arc<dyn Limiter>,
    /// Requests, acceptances and removals to the other side, on every replica.
    pub(super) bus: Arc<dyn Bus>,
    pub(super) names: Arc<NameCache>,
    /// Which recipients accepted which senders, for the relay: forgotten
    /// here when a relation changes.
    pub(super) consents: Arc<ConsentCache>,
    /// Contact lists of the online panel, kept current with presence.
    pub(super) online: OnlineContacts,
    pub(super) view: PresenceView,
    pub(super) visibility: Visibility,
}

impl Contacts {
    /// Adds a contact: accepted on the caller's side; the other user gets a
    /// request (or, if it had asked already, both sides are accepted).
    pub async fn add_contact(
        &self,
        user: &AuthUser,
        target: ContactTarget,
    ) -> Result<(Contact, Seen)> {
        self.spend_contact_change(user).await?;
        let friend = match target {
            ContactTarget::Name(name) => self
                .names
                .resolve(self.store.as_ref(), &name)
                .await?
                .map(|n| n.id),
            ContactTarget::Id(id) => self.store.user_by_id(id).await?.map(|u| u.id),
        }
        .ok_or(Error::NotFound("User not found"))?;
        if friend == user.id {
            return Err(Error::Refused("You cannot add yourself as a contact"));
        }
        let contact = self
            .store
            .add_contact(user.id, friend)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyContact => Error::Refused("Already a contact"),
                other => other.into(),
            })?;
        self.contacts_changed(user.id, friend).await?;
        let (contact, seen) = self
            .view
            .with_presence(user.id, vec![contact], |c| &mut c.other)
            .await?
            .remove(0);
        // The friend had asked already: both sides are accepted now.
        let accepted = seen.consents;
        self.tell(
            friend,
            |me| match accepted {
                true => ServerFrame::ContactAccepted { user: me },
                false => ServerFrame::ContactRequest { user: me },
            },
            user,
        )
        .await;
        Ok((contact, seen))
    }

    /// The caller's accepted contacts, by name, each with whether it is online.
    pub async fn contacts(
        &self,
        user: &AuthUser,
        skip: u32,
        limit: u32,
    ) -> Result<Vec<(Contact, Seen)>> {
        let contacts = self
            .store
            .contacts(user.id, i64::from(skip), i64::from(limit))
            .await?;
        self.view
            .with_presence(user.id, contacts, |c| &mut c.other)
            .await
    }

    /// Requests others sent the caller that it has not answered, oldest first.
    pub async fn pending_requests(&self, user: &AuthUser) -> Result<Vec<(Contact, Seen)>> {
        let requests = self.store.pending_requests(user.id).await?;
        self.view
            .with_presence(user.id, requests, |c| &mut c.other)
            .await
    }

    /// Accepts `requester`'s request: both sides become accepted.
    pub async fn accept_request(
        &self,
        user: &AuthUser,
        requester: UserId,
    ) -> Result<(Contact, Seen)> {
        self.spend_contact_change(user).await?;
        let contact = self
            .store
            .accept_request(user.id, requester)
            .await?
            .ok_or(Error::NotFound("Friend request not found"))?;
        self.contacts_changed(user.id, requester).await?;
        self.tell(
            requester,
            |me| ServerFrame::ContactAccepted { user: me },
            user,
        )
        .await;
        self.view
            .with_presence(user.id, vec![contact], |c| &mut c.other)
            .await
            .map(|mut one| one.remove(0))
    }

    /// Removes a contact, or rejects or cancels a request, on both sides.
    pub async fn remove_contact(&self, user: &AuthUser, other: UserId) -> Result<()> {
        self.spend_contact_change(user).await?;
        if !self.store.remove_contact(user.id, other).await? {
            return Err(Error::NotFound("Contact not found"));
        }
        self.contacts_changed(user.id, other).await?;
        let frame = ServerFrame::ContactRemoved {
            username: &user.username,
        };
        self.publish(other, frame.to_text()).await;
        Ok(())
    }

    /// Tells `other` (on every replica) what the caller just did, as the
    /// frame `frame` makes of the caller's card.
    async fn tell(
        &self,
        other: UserId,
        frame: impl for<'a> FnOnce(ContactCard<'a>) -> ServerFrame<'a>,
        user: &AuthUser,
    ) {
        let me = match self.store.user_by_id(user.id).await {
            Ok(Some(me)) => me,
            Ok(None) => return, // deleted meanwhile: nobody to announce
            Err(err) => {
                tracing::warn!(error = %err, "contact notice not sent");
                return;
            }
        };
        let card = ContactCard {
            id: me.id,
            username: &me.username,
            public_key: &me.public_key,
        };
        self.publish(other, frame(card).to_text()).await;
    }

    /// A frame to `other`'s connections, on every replica; best effort: the
    /// change is stored, and lists show it.
    async fn publish(&self, other: UserId, text: String) {
        let event = Event::Text {
            text,
            audience: Audience::Users(vec![other]),
        };
        if let Err(err) = self.bus.publish(event).await {
            tracing::warn!(error = %err, "contact notice not sent");
        }
    }

    /// Friend requests, acceptances and removals share one budget per user.
    async fn spend_contact_change(&self, user: &AuthUser) -> Result<()> {
        spend(
            self.limiter.as_ref(),
            Limit::ContactsPerUser,
            &user.id.to_string(),
        )
        .await
    }

    /// After the store changed the relation of `a` and `b`: both lists are
    /// stale wherever the online panel has them cached, on every replica.
    async fn contacts_changed(&self, a: UserId, b: UserId) -> Result<()> {
        self.consents.forget(a, b);
        Ok(self.presence.contacts_changed(&[a, b]).await?)
    }

    /// The caller's contacts that are online now and whose address it may see.
    pub async fn online_contacts(&self, user: &AuthUser) -> Result<Online> {
        self.online
            .of(
                self.store.as_ref(),
                self.presence.as_ref(),
                user.id,
                self.visibility,
            )
            .await
    }

    /// Where to reach `username` directly. Unknown, offline and not visible to
    /// the caller are one and the same answer, so strangers cannot probe.
    pub async fn connection_info(
        &self,
        user: &AuthUser,
        username: &str,
    ) -> Result<(User, Endpoint)> {
        const UNAVAILABLE: Error = Error::NotFound("User not found or offline");
        let key = Username::lookup_key(username).ok_or(UNAVAILABLE)?;
        let target = self
            .store
            .visible_user(user.id, &key, self.visibility)
            .await?
            .ok_or(UNAVAILABLE)?;
        let at = self.presence.locate(&[target.id]).await?[0]
            .ok_or(UNAVAILABLE)?
            .at;
        Ok((target, at))
    }
}
