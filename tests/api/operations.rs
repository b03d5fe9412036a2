//! What operators do to a running service: rotating the token-signing key
//! across replicas, and restoring a backup.

use futures_util::StreamExt;
use reqwest::StatusCode;
use secchat::{auth::jwt::SigningKeys, config::Settings};
use serde_json::{Value, json};
use tokio_tungstenite::{connect_async, tungstenite::Message};

use crate::helpers::{Backend, JWT_SECRET, PATIENCE, TestApp, WsClient};

const NEW_SECRET: &str = "a-new-secret-a-new-secret-a-new-secret!";

/// A replica of `backend` that signs and verifies with `keys` (`id:secret,…`),
/// or with `JWT_SECRET` alone (the id `default`) when `keys` is empty.
async fn replica_with_keys(backend: &Backend, keys: &str) -> TestApp {
    let keys = (!keys.is_empty()).then(|| SigningKeys::parse(keys).expect("a key list"));
    backend
        .spawn(|s: &mut Settings| {
            if keys.is_some() {
                s.accounts.jwt_secret = None;
            }
            s.accounts.jwt_keys = keys;
        })
        .await
}

/// Whether `token` is accepted by `app`, over HTTP and by a WebSocket
/// (which answers its first frame with `authenticated` or closes with 1008).
async fn accepted(app: &TestApp, token: &str) -> bool {
    let http = app.get("/users/me", token).await.0;
    let (stream, _) = connect_async(app.ws_url("")).await.expect("ws connects");
    let mut ws = WsClient { stream };
    ws.send_json(json!({"type": "auth", "token": token})).await;
    let first = tokio::time::timeout(PATIENCE, ws.stream.next())
        .await
        .expect("an answer in time");
    let ws_accepted = match first {
        Some(Ok(Message::Text(text))) => {
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(frame["type"], "authenticated", "{text}");
            true
        }
        Some(Ok(Message::Close(Some(close)))) => {
            assert_eq!(u16::from(close.code), 1008);
            false
        }
        other => panic!("neither authenticated nor closed: {other:?}"),
    };
    assert_eq!(
        http == StatusCode::OK,
        ws_accepted,
        "HTTP and the WebSocket agree ({http})"
    );
    ws_accepted
}

/// The rolling rotation of docs/OPERATIONS.md, two replicas at a time on
/// different key lists, as they are while a roll is under way: at every step
/// a token either replica signed is accepted by both, until the old key is
/// dropped, and then only the old key's tokens are refused.
#[tokio::test]
async fn the_signing_key_rotates_across_replicas_without_logging_anyone_out() {
    let backend = Backend::new().await;
    let (old, new) = (
        format!("default:{JWT_SECRET}"),
        format!("next:{NEW_SECRET}"),
    );
    let before = replica_with_keys(&backend, "").await;
    before.user("alice").await;
    let from_before = before.login("alice", None).await;

    // 1. The new key is added second: replica a has it, b not yet; both still sign with the old one.
    let (a, b) = (
        replica_with_keys(&backend, &format!("{old},{new}")).await,
        before,
    );
    let from_a1 = a.login("alice", None).await;
    for token in [&from_before, &from_a1] {
        assert!(accepted(&a, token).await && accepted(&b, token).await);
    }

    // 2. Every replica has both; now it is moved first on a: a signs with it, b (old first) accepts it.
    let b = replica_with_keys(&backend, &format!("{old},{new}")).await;
    let a = replica_with_keys(&backend, &format!("{new},{old}")).await;
    let (from_a2, from_b2) = (a.login("alice", None).await, b.login("alice", None).await);
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid;
    assert_eq!(kid(&from_a2).as_deref(), Some("next"));
    assert_eq!(kid(&from_b2).as_deref(), Some("default"));
    for token in [&from_before, &from_a1, &from_a2, &from_b2] {
        assert!(accepted(&a, token).await && accepted(&b, token).await);
    }

    // 3. The old key is dropped on a (b still lists it): the new key's tokens
    // pass everywhere; the old key's only where it is still listed.
    let b = replica_with_keys(&backend, &format!("{new},{old}")).await;
    let a = replica_with_keys(&backend, &new).await;
    let from_b3 = b.login("alice", None).await;
    for token in [&from_a2, &from_b3] {
        assert!(accepted(&a, token).await && accepted(&b, token).await);
    }
    for token in [&from_before, &from_b2] {
        assert!(
            !accepted(&a, token).await,
            "the dropped key's tokens are refused"
        );
        assert!(accepted(&b, token).await);
    }
}
