//! Contacts and friend requests, with the presence each answer shows.

use std::sync::Arc;

use super::{
    authn::AuthUser,
    budget::spend,
    consent::ConsentCache,
    error::{Error, Result},
    names::NameCache,
    online::{Online, OnlineContacts},
    visible::PresenceView,
};
use crate::{
    config::Visibility,
    domain::{Endpoint, UserId, Username},
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
    ) -> Result<(Contact, bool)> {
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
        self.view
            .with_presence(user.id, vec![contact], |c| &mut c.other)
            .await
            .map(|mut one| one.remove(0))
    }

    /// The caller's accepted contacts, by name, each with whether it is online.
    pub async fn contacts(
        &self,
        user: &AuthUser,
        skip: u32,
        limit: u32,
    ) -> Result<Vec<(Contact, bool)>> {
        let contacts = self
            .store
            .contacts(user.id, i64::from(skip), i64::from(limit))
            .await?;
        self.view
            .with_presence(user.id, contacts, |c| &mut c.other)
            .await
    }

    /// Requests others sent the caller that it has not answered, oldest first.
    pub async fn pending_requests(&self, user: &AuthUser) -> Result<Vec<(Contact, bool)>> {
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
    ) -> Result<(Contact, bool)> {
        self.spend_contact_change(user).await?;
        let contact = self
            .store
            .accept_request(user.id, requester)
            .await?
            .ok_or(Error::NotFound("Friend request not found"))?;
        self.contacts_changed(user.id, requester).await?;
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
        self.contacts_changed(user.id, other).await
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
