//! Durable storage: users, contacts, offline messages.
//!
//! One trait, one implementation per database. Queries are built at run time, so
//! no database is needed to compile the crate.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::Visibility;

pub mod names;
pub mod postgres;
mod sql;
pub mod sqlite;
pub mod writer;

pub type UserId = i64;

/// Most unread messages one fetch hands out; the rest wait for the next fetch.
pub const INBOX_PAGE: i64 = 1000;

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
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

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Message {
    pub id: i64,
    pub sender_id: UserId,
    pub receiver_id: UserId,
    pub encrypted_content: String,
    pub sent_at: DateTime<Utc>,
}

/// An unread message with its sender's name, as pushed over the WebSocket.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxMessage {
    #[sqlx(flatten)]
    pub message: Message,
    pub sender_username: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub sender_id: UserId,
    pub receiver_id: UserId,
    pub content: String,
    pub sent_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username or email already registered")]
    Duplicate,
    #[error("already a contact")]
    AlreadyContact,
    #[error("the store is unreachable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        crate::metrics::backend_error(crate::metrics::Backend::Store);
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.into()),
            other => Self::Other(other.into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does.
    async fn ping(&self) -> StoreResult<()>;

    /// Fails with [`StoreError::Duplicate`] when the username or email key is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    async fn credentials(&self, username_key: &str) -> StoreResult<Option<Credentials>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>>;
    async fn user_by_username(&self, username_key: &str) -> StoreResult<Option<User>>;

    /// Users whose username key contains `needle` literally, `exclude` left out, by name.
    async fn search_users(
        &self,
        needle: &str,
        exclude: UserId,
        limit: i64,
    ) -> StoreResult<Vec<User>>;
    async fn touch_last_seen(&self, id: UserId, at: DateTime<Utc>) -> StoreResult<()>;

    /// `owner` accepts `other` on its side; `other` gets a pending request unless it
    /// already has a row. [`StoreError::AlreadyContact`] when `owner` had accepted already.
    async fn add_contact(&self, owner: UserId, other: UserId) -> StoreResult<Contact>;
    async fn contacts(&self, owner: UserId, skip: i64, limit: i64) -> StoreResult<Vec<Contact>>;
    /// Requests others sent `owner` that it has not answered, oldest first.
    async fn pending_requests(&self, owner: UserId) -> StoreResult<Vec<Contact>>;
    /// Accepts `requester`'s request on both sides; `None` when there was none.
    async fn accept_request(
        &self,
        owner: UserId,
        requester: UserId,
    ) -> StoreResult<Option<Contact>>;
    /// Removes both sides; false when neither existed.
    async fn remove_contact(&self, owner: UserId, other: UserId) -> StoreResult<bool>;
    /// `viewer`'s accepted contacts whose address `viewer` may see.
    async fn visible_contacts(
        &self,
        viewer: UserId,
        visibility: Visibility,
    ) -> StoreResult<Vec<User>>;
    /// The user named by `username_key` if `viewer` may see its address (itself included).
    async fn visible_user(
        &self,
        viewer: UserId,
        username_key: &str,
        visibility: Visibility,
    ) -> StoreResult<Option<User>>;
    /// Users that have `subject` as an accepted contact.
    async fn watchers(&self, subject: UserId) -> StoreResult<Vec<UserId>>;

    /// Stores messages in one round trip; returns them with ids, in input order.
    async fn store_messages(&self, messages: &[NewMessage]) -> StoreResult<Vec<Message>>;
    /// Unread messages of `receiver`, oldest first, left unread.
    async fn peek_unread(&self, receiver: UserId) -> StoreResult<Vec<InboxMessage>>;
    async fn mark_read(&self, receiver: UserId, ids: &[i64]) -> StoreResult<()>;
    /// Unread messages of `receiver`, oldest first, marked read in the same statement,
    /// so concurrent callers never receive the same message.
    async fn take_unread(&self, receiver: UserId) -> StoreResult<Vec<Message>>;
}
