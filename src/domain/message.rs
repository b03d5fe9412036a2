use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::UserId;

/// A directed message in flight from one user to another. Its content is
/// opaque: the server never sees plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    pub sender_id: UserId,
    pub sender_username: String,
    pub recipient_id: UserId,
    pub content: String,
    pub sent_at: DateTime<Utc>,
}
