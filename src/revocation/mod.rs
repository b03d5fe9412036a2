//! Tokens refused after logout, until they would have expired anyway; and the
//! tokens issued to each user, so that all of them can be refused at once
//! (password change, log out everywhere, account deletion).
//!
//! Implementations: the SQL stores (`backends::sql`, used without Redis) and
//! Redis (`backends::redis`, shared by replicas).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::UserId;

#[cfg(test)]
pub mod contract;

#[derive(Debug, thiserror::Error)]
#[error("revocation backend unavailable")]
pub struct RevocationError(#[source] pub anyhow::Error);

#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    /// Refuses token `jti` from now until `expires_at` (and a little after).
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), RevocationError>;
    async fn is_revoked(&self, jti: &str) -> Result<bool, RevocationError>;

    /// Records token `jti`, issued to `user`, valid until `expires_at`.
    async fn issued(
        &self,
        user: UserId,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), RevocationError>;

    /// Revokes every unexpired token issued to `user`, except `keep`.
    async fn revoke_all(&self, user: UserId, keep: Option<&str>) -> Result<(), RevocationError>;
}
