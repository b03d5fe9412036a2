//! What a client's WebSocket text frame asks for.

use std::borrow::Cow;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Any text that is not a JSON object: relayed to everyone else as
    /// `{sender}: {text}`, as the seed does.
    Broadcast(&'a str),
    /// A JSON object with string fields `recipient_username` and `content`,
    /// and optionally a string `client_id` (others are ignored). Borrowed from
    /// the frame where it has no escapes.
    Direct {
        recipient_username: Cow<'a, str>,
        content: Cow<'a, str>,
        /// The sender's own name for the message: it asks for receipts.
        client_id: Option<Cow<'a, str>>,
        /// `"ephemeral": true`: for the recipient's open connections only.
        ephemeral: bool,
    },
    /// `{"type": "ack", "ids": [...]}`: the client has these messages.
    Ack { ids: Vec<i64> },
    /// `{"type": "auth", "token": "..."}`: the client renews the connection's
    /// authentication with a newer token.
    Auth { token: Cow<'a, str> },
    /// Some other JSON object: a client mistake, answered with an error
    /// (which names the frame's `client_id`, if it has a string one).
    Malformed { client_id: Option<Cow<'a, str>> },
}

/// Whether a broadcast may carry `c`: not a control character (C0, C1: ESC,
/// backspace, NUL, line breaks), not a format character (bidi overrides and
/// isolates, zero-width spaces), not a line or paragraph separator. So a
/// broadcast is one line that shows what it says and nothing that a terminal
/// or a page could turn into someone else's line, or into the server's own
/// notice. The zero-width joiner is the one exception: emoji sequences need it.
pub fn is_broadcastable(c: char) -> bool {
    use icu_properties::{CodePointMapData, props::GeneralCategory};
    if c.is_ascii() {
        return !c.is_ascii_control();
    }
    c == '\u{200d}'
        || !matches!(
            CodePointMapData::<GeneralCategory>::new().get(c),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

#[derive(Deserialize)]
struct AuthFields<'a> {
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    #[serde(borrow)]
    token: Cow<'a, str>,
}

#[derive(Deserialize)]
struct DirectFields<'a> {
    #[serde(borrow)]
    recipient_username: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(borrow, default)]
    client_id: Option<Cow<'a, str>>,
    #[serde(default)]
    ephemeral: bool,
}

/// What any JSON object may name: the client's id for it, if a string.
#[derive(Deserialize)]
struct NamedFields<'a> {
    #[serde(borrow, default, deserialize_with = "string_or_none")]
    client_id: Option<Cow<'a, str>>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Either::deserialize(d)? {
        Either::Text(text) => Some(text),
        Either::Other(_) => None,
    })
}

#[derive(Deserialize)]
struct AckFields<'a> {
    #[serde(borrow)]
    r#type: Cow<'a, str>,
    ids: Vec<super::Whole>,
}

impl<'a> ClientFrame<'a> {
    /// The client's name for the message the frame carries, if it gave one:
    /// an answer to the frame, whatever it is, carries it.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Self::Direct { client_id, .. } | Self::Malformed { client_id } => client_id.as_deref(),
            _ => None,
        }
    }

    pub fn parse(text: &'a str) -> Self {
        if !text.trim_start().starts_with('{') {
            return Self::Broadcast(text);
        }
        match serde_json::from_str::<DirectFields>(text) {
            Ok(f) => Self::Direct {
                recipient_username: f.recipient_username,
                content: f.content,
                client_id: f.client_id,
                ephemeral: f.ephemeral,
            },
            Err(_) => match serde_json::from_str::<AuthFields>(text) {
                Ok(f) if f.r#type == "auth" => Self::Auth { token: f.token },
                _ if let Ok(f) = serde_json::from_str::<AckFields>(text)
                    && f.r#type == "ack" =>
                {
                    Self::Ack {
                        ids: f.ids.into_iter().map(|id| id.0).collect(),
                    }
                }
                _ if let Ok(f) = serde_json::from_str::<NamedFields>(text) => Self::Malformed {
                    client_id: f.client_id,
                },
                // An object all the same (its `client_id` twice, say).
                _ if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                    Self::Malformed { client_id: None }
                }
                // Text that merely starts like JSON is still a broadcast.
                _ => Self::Broadcast(text),
            },
        }
    }
}

#[cfg(test)]
mod broadcastable {
    use super::is_broadcastable;

    #[test]
    fn controls_formats_and_separators_are_not_broadcast() {
        for c in [
            '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{200b}',
            '\u{200e}', '\u{202e}', '\u{2066}', '\u{feff}', '\u{2028}', '\u{2029}',
        ] {
            assert!(!is_broadcastable(c), "{:?}", c);
        }
        for c in ['a', ' ', '系', '統', 'é', '😀', '\u{200d}', '\u{fe0f}'] {
            assert!(is_broadcastable(c), "{:?}", c);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn the_three_kinds() {
        assert_eq!(ClientFrame::parse("hi"), ClientFrame::Broadcast("hi"));
        assert_eq!(ClientFrame::parse("{oops"), ClientFrame::Broadcast("{oops"));
        assert_eq!(
            ClientFrame::parse(r#"{"a": 1}"#),
            ClientFrame::Malformed { client_id: None }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"content": "x", "client_id": "c\"1"}"#),
            ClientFrame::Malformed {
                client_id: Some("c\"1".into())
            },
            "a malformed frame keeps its name, escaped or not"
        );
        assert_eq!(
            ClientFrame::parse(r#" {"recipient_username": "bob", "content": "x\n", "extra": []}"#),
            ClientFrame::Direct {
                recipient_username: "bob".into(),
                content: "x\n".into(),
                client_id: None,
                ephemeral: false,
            }
        );
        assert_eq!(
            ClientFrame::parse(
                r#"{"recipient_username": "bob", "content": "x", "client_id": "c1"}"#
            ),
            ClientFrame::Direct {
                recipient_username: "bob".into(),
                content: "x".into(),
                client_id: Some("c1".into()),
                ephemeral: false,
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"recipient_username": "bob", "content": "x", "client_id": 1}"#),
            ClientFrame::Malformed { client_id: None },
            "a client id is a string"
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type": "ack", "ids": [3, 4.0]}"#),
            ClientFrame::Ack { ids: vec![3, 4] }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type": "ack", "ids": [3.5]}"#),
            ClientFrame::Malformed { client_id: None }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"recipient_username": 7, "content": "x"}"#),
            ClientFrame::Malformed { client_id: None }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type": "auth", "token": "a.b.c"}"#),
            ClientFrame::Auth {
                token: "a.b.c".into()
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type": "auth", "token": 1}"#),
            ClientFrame::Malformed { client_id: None }
        );
    }

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::hash_map(".*", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever arrives, parsing answers and never panics; only text that
        /// is no JSON object is broadcast, and then verbatim.
        #[test]
        fn any_text_is_classified(text in any::<String>()) {
            match ClientFrame::parse(&text) {
                ClientFrame::Broadcast(relayed) => {
                    prop_assert_eq!(relayed, text.as_str());
                    let object = serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object());
                    prop_assert!(!object);
                }
                ClientFrame::Direct { .. }
                | ClientFrame::Auth { .. }
                | ClientFrame::Ack { .. }
                | ClientFrame::Malformed { .. } => {
                    prop_assert!(serde_json::from_str::<Value>(&text).unwrap().is_object());
                }
            }
        }

        /// A directed message survives any other fields and any escaping.
        #[test]
        fn directed_messages_keep_their_fields(
            recipient in ".*",
            content in ".*",
            extra in prop::collection::hash_map("[a-z_]{1,12}", json_value(), 0..4),
        ) {
            let mut object = json!({"recipient_username": recipient, "content": content});
            for (k, v) in extra {
                if !["recipient_username", "content", "client_id", "ephemeral"].contains(&k.as_str()) {
                    object[k] = v;
                }
            }
            let text = object.to_string();
            prop_assert_eq!(
                ClientFrame::parse(&text),
                ClientFrame::Direct { recipient_username: recipient.as_str().into(), content: content.as_str().into(), client_id: None, ephemeral: false }
            );
        }

        /// Any other JSON object is a mistake, answered, never broadcast.
        #[test]
        fn other_objects_are_malformed(value in json_value()) {
            let directed = value.get("recipient_username").is_some_and(Value::is_string)
                && value.get("content").is_some_and(Value::is_string)
                && value.get("client_id").is_none_or(|c| c.is_string() || c.is_null())
                && value.get("ephemeral").is_none_or(Value::is_boolean);
            let auth = value.get("type").is_some_and(|t| t == "auth")
                && value.get("token").is_some_and(Value::is_string);
            let ack = value.get("type").is_some_and(|t| t == "ack")
                && value.get("ids").and_then(Value::as_array).is_some_and(|ids| {
                    ids.iter().all(|id| id.as_number().and_then(super::super::whole_number).is_some())
                });
            let text = value.to_string();
            let parsed = ClientFrame::parse(&text);
            match value {
                Value::Object(_) if directed => {
                    let is_direct = matches!(parsed, ClientFrame::Direct { .. });
                    prop_assert!(is_direct, "{:?}", parsed);
                }
                Value::Object(_) if auth => {
                    let is_auth = matches!(parsed, ClientFrame::Auth { .. });
                    prop_assert!(is_auth, "{:?}", parsed);
                }
                Value::Object(_) if ack => {
                    let is_ack = matches!(parsed, ClientFrame::Ack { .. });
                    prop_assert!(is_ack, "{:?}", parsed);
                }
                Value::Object(ref fields) => prop_assert_eq!(
                    parsed,
                    ClientFrame::Malformed {
                        client_id: fields.get("client_id").and_then(Value::as_str).map(Into::into)
                    }
                ),
                _ => prop_assert_eq!(parsed, ClientFrame::Broadcast(text.as_str())),
            }
        }
    }
}
