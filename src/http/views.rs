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

/// An online contact and where to reach it: the schema of the panel's
/// entries, which [`online_contacts_json`] writes.
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

/// `GET /me/contacts/online`'s body, as [`OnlineContact`]s would serialize
/// (the same fields in the same order), written without serde: each card's
/// id, name and key are escaped once while its list is cached
/// ([`Card::rendered`]), and where it is (an address, a port, a time) needs
/// no escaping.
pub fn online_contacts_json<'a>(
    online: impl Iterator<Item = (&'a Card, Sighting)> + Clone,
) -> Vec<u8> {
    // The longest address, port and time, with the names around them.
    const PLACE: usize =
        r#","ip_address":"","port":,"is_online":true,"last_seen":"2025-07-01T10:00:02Z"}"#.len()
            + "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".len()
            + "65535".len();
    // Sized once: the body is some 100 bytes an entry beyond its card's.
    let capacity = online
        .clone()
        .map(|(card, _)| head(card).len() + PLACE + 1)
        .sum::<usize>();
    let mut out = Vec::with_capacity(capacity + 2);
    out.push(b'[');
    for (i, (card, seen)) in online.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(head(card).as_bytes());
        out.extend_from_slice(br#","ip_address":""#);
        write_ip(&mut out, seen.at.ip);
        out.extend_from_slice(br#"","port":"#);
        out.extend_from_slice(itoa::Buffer::new().format(seen.at.port).as_bytes());
        out.extend_from_slice(br#","is_online":true,"last_seen":""#);
        crate::domain::time::write_iso(&mut out, seen.seen);
        out.extend_from_slice(br#""}"#);
    }
    out.push(b']');
    out
}

/// `{"id":…,"username":…,"public_key":…` of a card (without its closing
/// brace: where the rest goes), escaped once while its list is cached.
fn head(card: &Card) -> &str {
    card.rendered.get_or_init(|| {
        #[derive(Serialize)]
        struct Head<'a> {
            id: UserId,
            username: &'a str,
            public_key: &'a str,
        }
        let head = Head {
            id: card.id,
            username: &card.username,
            public_key: &card.public_key,
        };
        let mut json = serde_json::to_string(&head).expect("strings and numbers serialize");
        json.pop();
        json.into_boxed_str()
    })
}

/// An address as `Display` writes it; IPv4 (what nearly every client is
/// seen at) octet by octet.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                // Digits pushed one by one: a copy call a number cost more.
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::domain::Endpoint;

    /// The hand-written body is byte for byte what serde writes for the same
    /// entries, names that need escaping and IPv6 addresses included, and
    /// stays so when a card's rendering is reused.
    #[test]
    fn the_online_panel_renders_as_serde_would() {
        let card = |id, username: &str, public_key: &str| Card {
            id,
            username: username.to_owned(),
            public_key: public_key.to_owned(),
            rendered: OnceLock::new(),
        };
        let cards = [
            card(1, "alice", "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="),
            card(2, "quote\"back\\slash\u{1}tab\tžluťoučký", "key</script>"),
            card(3, "日本語", ""),
            card(4, "dora", "k"),
            card(5, "emil", "k"),
        ];
        let at = |ip: &str, port| Sighting {
            at: Endpoint {
                ip: ip.parse().unwrap(),
                port,
            },
            seen: DateTime::from_timestamp(1_767_225_600, 999_000_000).unwrap(),
        };
        let seen = [
            at("203.0.113.7", 40000),
            at("2001:db8::1", 0),
            at("::ffff:198.51.100.2", 65535),
            at("0.0.0.0", 7),
            at("255.255.255.255", 10000),
        ];
        let entries = || cards.iter().zip(seen);
        let by_serde: Vec<_> = entries()
            .map(|(card, seen)| OnlineContact {
                id: card.id,
                username: &card.username,
                public_key: &card.public_key,
                ip_address: seen.at.ip,
                port: seen.at.port,
                is_online: true,
                last_seen: seen.seen,
            })
            .collect();
        let expected = serde_json::to_vec(&by_serde).unwrap();
        for _ in 0..2 {
            let written = online_contacts_json(entries());
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected.clone()).unwrap()
            );
        }
        assert_eq!(online_contacts_json(std::iter::empty()), b"[]");
    }
}
