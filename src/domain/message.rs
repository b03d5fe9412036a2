use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::UserId;

/// A directed message in flight from one user to another. Its content is
/// opaque: the server never sees plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// Given when the server accepted it, from the same sequence as stored
    /// messages' ids: the message keeps it if it is stored, so acknowledgements
    /// and receipts name it whichever way it went.
    pub id: i64,
    pub sender_id: UserId,
    pub sender_username: String,
    pub recipient_id: UserId,
    pub content: String,
    #[serde(with = "crate::domain::time::compact")]
    pub sent_at: DateTime<Utc>,
    /// The sender gave a `client_id`: it is told when the recipient
    /// acknowledges the message.
    pub receipt: bool,
    /// Only for the recipient's open connections: never stored, never
    /// redelivered, never acknowledged (typing indicators, P2P signalling).
    /// Absent in events of replicas from before ephemeral messages.
    #[serde(default)]
    pub ephemeral: bool,
}

/// How a client takes its messages, when it says (`?ack=manual`): it
/// acknowledges each, and what it has not acknowledged is delivered again.
/// Without it, a message handed out is marked read.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    Manual,
}
