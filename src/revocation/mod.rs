//! Tokens refused after logout, until they would have expired anyway.
//!
//! Implementations: the SQL stores (`backends::sql`, used without Redis) and
//! Redis (`backends::redis`, shared by replicas).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

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
}
