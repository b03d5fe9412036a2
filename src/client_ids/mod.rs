//! The message ids given to senders' client ids, for a window: a directed
//! message sent again under the same `client_id` (a client retrying after a
//! lost answer) is answered with the first one's id and not delivered twice.
//!
//! Implementations: in this process (`backends::memory`) and Redis
//! (`backends::redis`, shared by replicas).

use async_trait::async_trait;

use crate::domain::UserId;

#[cfg(test)]
pub mod contract;

/// The longest `client_id` accepted, in characters.
pub const CLIENT_ID_MAX_CHARS: usize = 64;

/// Whether the server takes `client_id` (and names it in its answers).
pub fn is_valid(client_id: &str) -> bool {
    (1..=CLIENT_ID_MAX_CHARS).contains(&client_id.chars().count())
}

#[derive(Debug, thiserror::Error)]
#[error("client-id backend unavailable")]
pub struct ClientIdError(#[source] pub anyhow::Error);

#[async_trait]
pub trait ClientIds: Send + Sync + 'static {
    /// Remembers, for the window, that `sender`'s `client_id` names message
    /// `id`; if it names one already, answers that id and changes nothing.
    async fn remember(
        &self,
        sender: UserId,
        client_id: &str,
        id: i64,
    ) -> Result<Option<i64>, ClientIdError>;

    /// Forgets `sender`'s `client_id` if it still names `id` (that message was
    /// refused after all), so that sending it again is no duplicate.
    async fn forget(&self, sender: UserId, client_id: &str, id: i64) -> Result<(), ClientIdError>;
}
