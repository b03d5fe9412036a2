//! What the server writes on a WebSocket: every kind of frame, serialised in
//! one place ([`ServerFrame::to_text`]). The wire format is the seed's, byte for
//! byte (its clients compare strings): the JSON objects the seed built with
//! sorted keys keep them sorted, the message frames keep their field order,
//! and presence notices and broadcasts are plain text
//! (`tests/golden/frames.txt` pins every kind).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::time::iso;

/// How a directed message reaches its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Relayed to a connection as it was sent: `p2p_message`.
    Live,
    /// Stored first, and pushed from the store: `offline_message`.
    Stored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// A directed message; with its `id` for a connection that acknowledges
    /// (an ephemeral one never has one: it is never acknowledged).
    Message {
        arrival: Arrival,
        id: Option<i64>,
        sender_username: &'a str,
        content: &'a str,
        sent_at: DateTime<Utc>,
        ephemeral: bool,
    },
    /// `{"status": "用户 {recipient} 当前离线，消息已保存。"}`: stored offline.
    StoredOffline { recipient_username: &'a str },
    /// `{"error": "..."}`: the answer to a client's mistake; with the
    /// `client_id` of the frame it answers, when that frame had one.
    Error {
        error: &'a str,
        client_id: Option<&'a str>,
    },
    /// An ephemeral message found no open connection of its recipient.
    NotDelivered { client_id: Option<&'a str> },
    /// The server took responsibility for the message the client named `client_id`.
    Sent { client_id: &'a str, id: i64 },
    /// The recipient acknowledged message `id` (to a sender that asked for receipts).
    Delivered { id: i64 },
    /// The connection now stands on a token that expires then; `turn` says
    /// whether `GET /me/turn-credentials` hands out credentials (so that a
    /// client tries direct links only where the server has ICE servers).
    Authenticated {
        expires_at: DateTime<Utc>,
        turn: bool,
    },
    /// A contact's public key changed.
    KeyChanged {
        username: &'a str,
        public_key: &'a str,
    },
    /// Someone asked the user to be a contact.
    ContactRequest { user: ContactCard<'a> },
    /// Someone the user asked accepted (or asked too).
    ContactAccepted { user: ContactCard<'a> },
    /// A contact removed the user, or rejected or cancelled a request.
    ContactRemoved { username: &'a str },
    /// `{sender}: {text}`, as plain text.
    Broadcast {
        sender_username: &'a str,
        text: &'a str,
    },
    /// `系统消息: 用户 {username} 已上线。` or `已下线。`, as plain text.
    Presence { username: &'a str, online: bool },
}

/// Who a contact frame is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ContactCard<'a> {
    pub id: i64,
    pub username: &'a str,
    pub public_key: &'a str,
}

/// The JSON objects, each with its fields in the order they are written.
#[derive(Serialize)]
#[serde(untagged)]
enum Json<'a> {
    Message {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        sender_username: &'a str,
        content: &'a str,
        timestamp: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    Status {
        status: String,
    },
    Error {
        error: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
    NotDelivered {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
    Sent {
        client_id: &'a str,
        id: i64,
        r#type: &'static str,
    },
    Delivered {
        id: i64,
        r#type: &'static str,
    },
    Authenticated {
        expires_at: String,
        turn: bool,
        r#type: &'static str,
    },
    KeyChanged {
        public_key: &'a str,
        r#type: &'static str,
        username: &'a str,
    },
    Contact {
        r#type: &'static str,
        user: ContactCard<'a>,
    },
    ContactRemoved {
        r#type: &'static str,
        username: &'a str,
    },
}

impl<'a> ServerFrame<'a> {
    /// `{"error": "..."}` answering a frame without a `client_id`.
    pub fn error(error: &'a str) -> Self {
        Self::Error {
            error,
            client_id: None,
        }
    }

    /// The frame's text, as written to the socket.
    pub fn to_text(&self) -> String {
        let json = match *self {
            Self::Broadcast {
                sender_username,
                text,
            } => return format!("{sender_username}: {text}"),
            Self::Presence { username, online } => {
                let what = if online { "已上线" } else { "已下线" };
                return format!("系统消息: 用户 {username} {what}。");
            }
            Self::Message {
                arrival,
                id,
                sender_username,
                content,
                sent_at,
                ephemeral,
            } => Json::Message {
                r#type: match arrival {
                    Arrival::Live => "p2p_message",
                    Arrival::Stored => "offline_message",
                },
                id,
                sender_username,
                content,
                timestamp: iso(sent_at),
                ephemeral,
            },
            Self::StoredOffline { recipient_username } => Json::Status {
                status: format!("用户 {recipient_username} 当前离线，消息已保存。"),
            },
            Self::Error { error, client_id } => Json::Error { error, client_id },
            Self::NotDelivered { client_id } => Json::NotDelivered {
                r#type: "not_delivered",
                client_id,
            },
            Self::Sent { client_id, id } => Json::Sent {
                client_id,
                id,
                r#type: "sent",
            },
            Self::Delivered { id } => Json::Delivered {
                id,
                r#type: "delivered",
            },
            Self::Authenticated { expires_at, turn } => Json::Authenticated {
                expires_at: iso(expires_at),
                turn,
                r#type: "authenticated",
            },
            Self::KeyChanged {
                username,
                public_key,
            } => Json::KeyChanged {
                public_key,
                r#type: "key_changed",
                username,
            },
            Self::ContactRequest { user } => Json::Contact {
                r#type: "contact_request",
                user,
            },
            Self::ContactAccepted { user } => Json::Contact {
                r#type: "contact_accepted",
                user,
            },
            Self::ContactRemoved { username } => Json::ContactRemoved {
                r#type: "contact_removed",
                username,
            },
        };
        serde_json::to_string(&json).expect("a frame of strings and numbers serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_json_escapes() {
        let frame = ServerFrame::error("a \"quoted\"\nline \u{1}");
        assert_eq!(frame.to_text(), r#"{"error":"a \"quoted\"\nline \u0001"}"#);
    }
}
