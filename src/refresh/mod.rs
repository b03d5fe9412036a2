//! Sessions that last: the refresh tokens of each login (a session), rotated
//! at every use, with reuse detection (OAuth 2.0 Security Best Current
//! Practice, 4.14): a token works once; presenting a spent one ends its whole
//! session. Only a hash of each token is kept.
//!
//! Implementations: the SQL stores (`backends::sql`), durable like accounts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::UserId;

#[cfg(test)]
pub mod contract;

#[derive(Debug, thiserror::Error)]
#[error("refresh-token store unavailable")]
pub struct RefreshError(#[source] pub anyhow::Error);

/// A refresh token as kept: its hash, and the access token issued with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub hash: String,
    pub access_jti: String,
    pub access_expires_at: DateTime<Utc>,
    /// When it stops working if nobody uses it.
    pub lapses_at: DateTime<Utc>,
}

/// An access token still valid when its session ended: to be revoked.
pub type LiveAccess = (String, DateTime<Utc>);

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum Spend {
    /// It was live, and is now spent: the session goes on with a new one.
    Fresh { user: UserId, session: String },
    /// It had been spent already: the session is ended, and these of its
    /// access tokens were still valid.
    Reused { user: UserId, live: Vec<LiveAccess> },
    /// Never issued, lapsed, or its session ended.
    Unknown,
}

#[async_trait]
pub trait RefreshTokens: Send + Sync + 'static {
    /// Starts session `session` of `user` with its first token.
    async fn open(
        &self,
        user: UserId,
        session: &str,
        first: &RefreshRecord,
    ) -> Result<(), RefreshError>;

    /// Spends the token whose hash is `hash`, if live at `now`; a token spent
    /// already ends its session. Two callers never both get `Fresh`.
    async fn spend(&self, hash: &str, now: DateTime<Utc>) -> Result<Spend, RefreshError>;

    /// Adds the token that replaces a spent one; `false` if the session
    /// ended meanwhile (a logout while refreshing), and nothing was added.
    async fn rotate(&self, session: &str, next: &RefreshRecord) -> Result<bool, RefreshError>;

    /// Ends the session access token `access_jti` was issued in (none: no
    /// change); returns its other access tokens still valid.
    async fn end_session_of(&self, access_jti: &str) -> Result<Vec<LiveAccess>, RefreshError>;

    /// Ends every session of `user` except the one access token `keep` was
    /// issued in.
    async fn end_sessions(&self, user: UserId, keep: Option<&str>) -> Result<(), RefreshError>;
}
