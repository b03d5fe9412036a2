//! The JSON shapes the contract gives, built from store rows and presence.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    domain::{
        UserId,
        time::{iso8601, iso8601_opt},
    },
    presence::Sighting,
    service::{online::Card, visible::Seen},
    store::{Contact, Message, User},
};

/// A registered user, as the seed returns it.
#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub public_key: String,
    pub is_online: bool,
    #[serde(serialize_with = "iso8601")]
    #[schema(value_type = String, example = "2025-07-01T10:00:02Z")]
    pub created_at: DateTime<Utc>,
}

impl UserOut {
    pub fn new(user: User, is_online: bool) -> Self {
        Self {
            id: user.id,
            username: user.username,
            email: user.email,
            public_key: user.public_key,
            is_online,
            created_at: user.created_at,
        }
    }
}

/// A user in search results and heartbeat answers.
#[derive(Serialize, ToSchema)]
pub struct UserBrief {
    pub id: UserId,
    pub username: String,
    pub is_online: bool,
}

/// The other user of a contact entry.
#[derive(Serialize, ToSchema)]
pub struct Friend {
    pub id: UserId,
    pub username: String,
    pub public_key: String,
    pub is_online: bool,
    #[serde(serialize_with = "iso8601_opt")]
    #[schema(value_type = Option<String>)]
    pub last_seen: Option<DateTime<Utc>>,
    /// When the user last published a new public key; `null`: not since it registered.
    #[serde(serialize_with = "iso8601_opt")]
    #[schema(value_type = Option<String>)]
    pub key_changed_at: Option<DateTime<Utc>>,
}

/// A contact entry: the seed's user object and the revision's contact row at once.
#[derive(Serialize, ToSchema)]
pub struct ContactEntry {
    /// The other user's id (seed shape).
    pub id: UserId,
    pub username: String,
    pub public_key: String,
    pub is_online: bool,
    #[serde(serialize_with = "iso8601_opt")]
    #[schema(value_type = Option<String>)]
    pub last_seen: Option<DateTime<Utc>>,
    /// The caller's id.
    pub user_id: UserId,
    /// The other user's id.
    pub friend_id: UserId,
    #[schema(example = "accepted")]
    pub status: &'static str,
    #[serde(serialize_with = "iso8601")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    /// When the other user last published a new public key; `null`: not since it registered.
    #[serde(serialize_with = "iso8601_opt")]
    #[schema(value_type = Option<String>)]
    pub key_changed_at: Option<DateTime<Utc>>,
    /// Whether the other user accepted the caller too (until then it has
    /// consented to nothing: a request the caller sent is still pending there).
    pub mutual: bool,
    pub friend: Friend,
}

impl ContactEntry {
    pub fn new(owner: UserId, contact: Contact, seen: Seen) -> Self {
        let (other, is_online) = (contact.other, seen.online);
        Self {
            id: other.id,
            username: other.username.clone(),
            public_key: other.public_key.clone(),
            is_online,
            last_seen: other.last_seen,
            user_id: owner,
            friend_id: other.id,
            status: contact.status.as_str(),
            created_at: contact.created_at,
            key_changed_at: other.key_changed_at,
            mutual: seen.consents,
            friend: Friend {
                id: other.id,
                username: other.username,
                public_key: other.public_key,
                is_online,
                last_seen: other.last_seen,
                key_changed_at: other.key_changed_at,
            },
        }
    }
}

/// A friend request the caller received.
#[derive(Serialize, ToSchema)]
pub struct PendingEntry {
    /// The requester's id.
    pub id: UserId,
    /// The requester's id.
    pub user_id: UserId,
    /// The caller's id.
    pub friend_id: UserId,
    #[schema(example = "pending")]
    pub status: &'static str,
    #[serde(serialize_with = "iso8601")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    pub username: String,
    pub user: UserBrief,
}

impl PendingEntry {
    pub fn new(owner: UserId, request: Contact, seen: Seen) -> Self {
        let (requester, is_online) = (request.other, seen.online);
        Self {
            id: requester.id,
            user_id: requester.id,
            friend_id: owner,
            status: request.status.as_str(),
            created_at: request.created_at,
            username: requester.username.clone(),
            user: UserBrief {
                id: requester.id,
                username: requester.username,
                is_online,
            },
        }
    }
}

/// An online contact and where to reach it.
#[derive(Serialize, ToSchema)]
pub struct OnlineContact<'a> {
    pub id: UserId,
    pub username: &'a str,
    pub public_key: &'a str,
    #[schema(value_type = String)]
    pub ip_address: IpAddr,
    pub port: u16,
    pub is_online: bool,
    #[serde(serialize_with = "iso8601")]
    #[schema(value_type = String)]
    pub last_seen: DateTime<Utc>,
}

impl<'a> OnlineContact<'a> {
    pub fn new(card: &'a Card, seen: Sighting) -> Self {
        Self {
            id: card.id,
            username: &card.username,
            public_key: &card.public_key,
            ip_address: seen.at.ip,
            port: seen.at.port,
            is_online: true,
            last_seen: seen.seen,
        }
    }
}

/// Where to reach one user directly.
#[derive(Serialize, ToSchema)]
pub struct ConnectionInfo {
    pub username: String,
    pub public_key: String,
    pub ip_address: String,
    pub port: u16,
}

/// Relay credentials, in the shape of coturn's REST API.
#[derive(Serialize, ToSchema)]
pub struct TurnCredentialsOut {
    /// `<expiry as Unix seconds>:<user id>`.
    #[schema(example = "1767225600:15")]
    pub username: String,
    /// base64(HMAC-SHA1(TURN_SECRET, username)).
    pub password: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
    /// The TURN and STUN servers to use.
    #[schema(example = json!(["turn:turn.example.com:3478?transport=udp"]))]
    pub uris: Vec<String>,
}

impl From<crate::service::turn::TurnCredentials> for TurnCredentialsOut {
    fn from(c: crate::service::turn::TurnCredentials) -> Self {
        Self {
            username: c.username,
            password: c.password,
            ttl: c.ttl,
            uris: c.uris,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MessageOut {
    pub id: i64,
    pub sender_id: UserId,
    pub receiver_id: UserId,
    /// Opaque to the server.
    pub encrypted_content: String,
    #[serde(serialize_with = "iso8601")]
    #[schema(value_type = String, example = "2025-07-01T10:00:02Z")]
    pub sent_at: DateTime<Utc>,
}

impl From<Message> for MessageOut {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            sender_id: m.sender_id,
            receiver_id: m.recipient_id,
            encrypted_content: m.content,
            sent_at: m.sent_at,
        }
    }
}

/// `{"detail": "..."}`: errors, and the logout answer.
#[derive(Serialize, ToSchema)]
pub struct Detail {
    pub detail: &'static str,
}
