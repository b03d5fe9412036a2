//! Tokens refused after logout, until they would have expired anyway.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::StoreResult;

#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    async fn revoke(&self, jti: &str, expires_at: DateTime<Utc>) -> StoreResult<()>;
    async fn is_revoked(&self, jti: &str) -> StoreResult<bool>;
}
