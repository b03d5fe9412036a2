//! Durable storage: users, contacts, offline messages.
//!
//! One trait; its implementations (SQLite, Postgres) are in `backends::sql`.
//! The methods return boxed futures rather than going through `async_trait`, so
//! that each backend writes `impl Store for …` out in its own file while the
//! SQL they share stays one text.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use crate::{config::Visibility, domain::UserId};

#[cfg(test)]
pub mod contract;

/// Most unread messages one fetch hands out; the rest wait for the next fetch.
pub const INBOX_PAGE: i64 = 1000;

/// Which unread messages one fetch hands out: those after `after` (an id),
/// oldest first, at most [`INBOX_PAGE`] of them, and no more once their
/// contents reach `max_bytes` (the message that reaches it included, so a
/// page holds at least one message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: i64,
    pub max_bytes: u64,
}

impl Page {
    /// The first page, bounded by count only.
    pub const WHOLE: Self = Self::first(u64::MAX);

    pub const fn first(max_bytes: u64) -> Self {
        Self {
            after: 0,
            max_bytes,
        }
    }

    /// Whether `messages`, this page, may have left some out: a fetch after
    /// its last id may find more.
    pub fn is_full<'a>(&self, contents: impl ExactSizeIterator<Item = &'a str>) -> bool {
        let count = contents.len() as i64;
        count >= INBOX_PAGE || contents.map(|c| c.len() as u64).sum::<u64>() >= self.max_bytes
    }

    /// The byte bound as SQL binds it.
    pub fn max_bytes_sql(&self) -> i64 {
        i64::try_from(self.max_bytes).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    /// When the user last published a new public key (`None`: not since registering).
    pub key_changed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credentials {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
}

#[derive(Debug)]
pub struct NewUser {
    pub username: String,
    pub username_key: String,
    /// Unique: no two users' names look alike once case is folded.
    pub username_skeleton: String,
    /// Unique: no two users' names look alike as written.
    pub username_shape: String,
    pub email: String,
    pub email_key: String,
    pub password_hash: String,
    pub public_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactStatus {
    Pending,
    Accepted,
}

impl ContactStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
        }
    }
}

/// One side of a contact relation: the owner's row about `other`.
#[derive(Debug, Clone)]
pub struct Contact {
    pub other: User,
    pub status: ContactStatus,
    pub created_at: DateTime<Utc>,
}

/// A stored offline message: the store keeps a message until it is read, or
/// until it expires. The columns are `receiver_id` and
/// `encrypted_content`, as the seed named them; inside the crate a message has
/// a recipient and a content, like a message in flight.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Message {
    pub id: i64,
    pub sender_id: UserId,
    #[sqlx(rename = "receiver_id")]
    pub recipient_id: UserId,
    #[sqlx(rename = "encrypted_content")]
    pub content: String,
    pub sent_at: DateTime<Utc>,
}

/// An unread message with its sender's name, as pushed over the WebSocket.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxMessage {
    #[sqlx(flatten)]
    pub message: Message,
    pub sender_username: String,
}

/// A message to store, under the id [`Store::next_message_id`] gave it:
/// storing it again is harmless (the copy already stored is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: i64,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub content: String,
    pub sent_at: DateTime<Utc>,
    /// The sender asked to be told when the recipient acknowledges it.
    pub receipt: bool,
    /// Stored already claimed until then: a connection that writes it and
    /// waits for its acknowledgement holds it.
    pub claimed_until: Option<DateTime<Utc>>,
}

impl From<&crate::domain::DirectMessage> for NewMessage {
    fn from(m: &crate::domain::DirectMessage) -> Self {
        Self {
            id: m.id,
            sender_id: m.sender_id,
            recipient_id: m.recipient_id,
            content: m.content.clone(),
            sent_at: m.sent_at,
            receipt: m.receipt,
            claimed_until: None,
        }
    }
}

/// A message its recipient acknowledged (and so deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Acked {
    pub id: i64,
    #[sqlx(rename = "receiver_id")]
    pub recipient_id: UserId,
    pub sender_id: UserId,
    /// The sender asked for a receipt.
    pub receipt: bool,
}

/// How much unread mail one user's mailbox holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxQuota {
    pub messages: u64,
    pub bytes: u64,
    /// Of the messages, those from senders the recipient has not accepted as
    /// contacts, all such senders together.
    pub from_strangers: u64,
}

impl MailboxQuota {
    /// For messages the server already accepted (a relayed message that no
    /// connection could write): stored whatever the mailbox holds.
    pub const NONE: Self = Self {
        messages: u64::MAX,
        bytes: u64::MAX,
        from_strangers: u64::MAX,
    };

    /// Whether a mailbox holding `usage` has room for one more message of
    /// `bytes`, from a stranger or not.
    pub fn admits(&self, usage: &MailboxUsage, bytes: u64, from_stranger: bool) -> bool {
        usage.messages.saturating_add(1) <= self.messages
            && usage.bytes.saturating_add(bytes) <= self.bytes
            && (!from_stranger || usage.from_strangers.saturating_add(1) <= self.from_strangers)
    }
}

/// What a mailbox holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxUsage {
    pub messages: u64,
    pub bytes: u64,
    pub from_strangers: u64,
}

impl MailboxUsage {
    pub fn add(&mut self, bytes: u64, from_stranger: bool) {
        self.messages += 1;
        self.bytes += bytes;
        self.from_strangers += u64::from(from_stranger);
    }
}

/// What became of one message offered to [`Store::store_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Stored(Message),
    /// The recipient's mailbox had no room for it under the quota.
    MailboxFull,
    /// The recipient no longer exists (its account was deleted).
    NoRecipient,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username or email already registered")]
    Duplicate,
    #[error("already a contact")]
    AlreadyContact,
    /// A user named by id does not exist (any more).
    #[error("no such user")]
    NoSuchUser,
    #[error("the store is unreachable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A store call that went through a [`crate::batch::Batcher`]: its batch's
/// error, with the same classification.
impl From<crate::batch::BatchError<StoreError>> for StoreError {
    fn from(err: crate::batch::BatchError<StoreError>) -> Self {
        use crate::batch::BatchError;
        match err {
            BatchError::Stopped => Self::Unavailable(anyhow::anyhow!("the batching task stopped")),
            BatchError::Failed(err) => match &*err {
                Self::Unavailable(cause) => Self::Unavailable(anyhow::anyhow!("{cause:#}")),
                other => Self::Other(anyhow::anyhow!("{other:#}")),
            },
        }
    }
}

/// What a store method returns.
pub type Pending<'a, T> = BoxFuture<'a, StoreResult<T>>;

pub trait Store: Send + Sync + 'static {
    /// Answers when the database does.
    fn ping(&self) -> Pending<'_, ()>;

    /// Fails with [`StoreError::Duplicate`] when the username or email key is taken.
    fn create_user(&self, user: NewUser) -> Pending<'_, User>;
    fn credentials<'a>(&'a self, username_key: &'a str) -> Pending<'a, Option<Credentials>>;
    fn user_by_id(&self, id: UserId) -> Pending<'_, Option<User>>;
    fn user_by_username<'a>(&'a self, username_key: &'a str) -> Pending<'a, Option<User>>;

    /// Users whose username key contains `needle` literally, `exclude` left out, by name.
    fn search_users<'a>(
        &'a self,
        needle: &'a str,
        exclude: UserId,
        limit: i64,
    ) -> Pending<'a, Vec<User>>;
    fn touch_last_seen(&self, id: UserId, at: DateTime<Utc>) -> Pending<'_, ()>;

    /// Users whose name has no skeleton or shape yet (registered before they
    /// existed), with ids above `after`, by id: `(id, username)`.
    fn unkeyed_users(&self, after: UserId, limit: i64) -> Pending<'_, Vec<(UserId, String)>>;
    /// Sets a user's look-up key, skeleton and shape; false (and nothing
    /// changed) when another user holds any of them.
    fn set_username_keys<'a>(
        &'a self,
        id: UserId,
        key: &'a str,
        skeleton: &'a str,
        shape: &'a str,
    ) -> Pending<'a, bool>;
    fn set_password_hash<'a>(&'a self, id: UserId, hash: &'a str) -> Pending<'a, ()>;
    /// Replaces the user's public key and records when; `None` when the user is gone.
    fn set_public_key<'a>(
        &'a self,
        id: UserId,
        public_key: &'a str,
        at: DateTime<Utc>,
    ) -> Pending<'a, Option<User>>;
    /// Deletes the user with its contacts, requests and messages (sent and
    /// received), and keeps its name from being registered before
    /// `name_retired_until`. Returns the users it had a contact row with
    /// (either side), or `None` when there was no such user.
    fn delete_user(
        &self,
        id: UserId,
        name_retired_until: DateTime<Utc>,
    ) -> Pending<'_, Option<Vec<UserId>>>;

    /// `owner` accepts `other` on its side; `other` gets a pending request unless it
    /// already has a row. [`StoreError::AlreadyContact`] when `owner` had accepted already.
    fn add_contact(&self, owner: UserId, other: UserId) -> Pending<'_, Contact>;
    /// `owner`'s accepted contacts, by name.
    fn contacts(&self, owner: UserId, skip: i64, limit: i64) -> Pending<'_, Vec<Contact>>;
    /// Requests others sent `owner` that it has not answered, oldest first.
    fn pending_requests(&self, owner: UserId) -> Pending<'_, Vec<Contact>>;
    /// Accepts `requester`'s request on both sides; `None` when there was none.
    fn accept_request(&self, owner: UserId, requester: UserId) -> Pending<'_, Option<Contact>>;
    /// Removes both sides; false when neither existed.
    fn remove_contact(&self, owner: UserId, other: UserId) -> Pending<'_, bool>;
    /// `viewer`'s accepted contacts whose address `viewer` may see, by name.
    fn visible_contacts(&self, viewer: UserId, visibility: Visibility) -> Pending<'_, Vec<User>>;
    /// The user named by `username_key` if `viewer` may see its address (itself included).
    fn visible_user<'a>(
        &'a self,
        viewer: UserId,
        username_key: &'a str,
        visibility: Visibility,
    ) -> Pending<'a, Option<User>>;
    /// Users that have `subject` as an accepted contact on their side.
    fn watchers(&self, subject: UserId) -> Pending<'_, Vec<UserId>>;
    /// The users `subject` has accepted as contacts on its own side: those it
    /// consents to show its presence to.
    fn consented(&self, subject: UserId) -> Pending<'_, Vec<UserId>>;
    /// Which of `subjects` have accepted `viewer` on their side (consent to
    /// show it their presence), in no particular order.
    fn consenting<'a>(&'a self, viewer: UserId, subjects: &'a [UserId])
    -> Pending<'a, Vec<UserId>>;

    /// A new message id, greater than any this store gave before: ids
    /// follow the order in which messages were accepted (across replicas,
    /// for messages accepted more than 50 ms apart).
    fn next_message_id(&self) -> Pending<'_, i64>;
    /// [`Store::next_message_id`] from the ids this process holds already,
    /// without waiting: `None` means "ask `next_message_id`". The relay uses
    /// it, so that a message pays no boxed future for its id.
    fn next_message_id_now(&self) -> Option<i64>;
    /// Stores the messages that fit their recipients' mailboxes under
    /// `quota` (a message to a user that no longer exists is not stored), in
    /// order, in one transaction of a few round trips whatever their number;
    /// answers for each in input order. A message whose id is stored already
    /// is not stored again, and is answered as stored.
    fn store_messages<'a>(
        &'a self,
        messages: &'a [NewMessage],
        quota: MailboxQuota,
    ) -> Pending<'a, Vec<Admission>>;
    /// What `user`'s mailbox holds.
    fn mailbox_usage(&self, user: UserId) -> Pending<'_, MailboxUsage>;
    /// Unread messages of `recipient` that no push has claimed, oldest first,
    /// one page, left unread.
    fn peek_unread(&self, recipient: UserId, page: Page) -> Pending<'_, Vec<Message>>;
    /// Claims `recipient`'s unread messages that no one else has claimed,
    /// oldest first (one page), for `lease`, in one statement: until
    /// the claim is released or runs out, no other claim or take gets them.
    /// With `take_over`, claimed messages are claimed anew too (a connection
    /// that acknowledges takes over what an earlier one of the user's held).
    fn claim_unread(
        &self,
        recipient: UserId,
        lease: std::time::Duration,
        take_over: bool,
        page: Page,
    ) -> Pending<'_, Vec<InboxMessage>>;
    /// Releases the claims on these messages of `recipient`'s (they were not
    /// delivered); others' ids are ignored.
    fn release_claims<'a>(&'a self, recipient: UserId, ids: &'a [i64]) -> Pending<'a, ()>;
    /// Extends the claims on these messages of `recipient`'s to `until` (the
    /// connection holding them is alive); others' ids are ignored.
    fn renew_claims<'a>(
        &'a self,
        recipient: UserId,
        ids: &'a [i64],
        until: DateTime<Utc>,
    ) -> Pending<'a, ()>;
    /// Deletes these messages, each `(recipient, id)` (they were read, or
    /// acknowledged), of any number of recipients at once; an id that is not
    /// that recipient's is ignored. Returns those deleted.
    fn delete_read<'a>(&'a self, reads: &'a [(UserId, i64)]) -> Pending<'a, Vec<Acked>>;
    /// Unread, unclaimed messages of `recipient`, oldest first, one page,
    /// deleted in the same statement, so concurrent callers never receive the
    /// same message and no read message stays stored.
    fn take_unread(&self, recipient: UserId, page: Page) -> Pending<'_, Vec<Message>>;
    /// Deletes up to `limit` messages sent before `sent_before`, oldest first;
    /// returns how many.
    fn expire_messages(&self, sent_before: DateTime<Utc>, limit: i64) -> Pending<'_, u64>;
}
