//! Every kind of frame the server writes, byte for byte, against
//! `tests/golden/frames.txt`: the seed's clients compare strings (the Chinese
//! status texts included), so neither a key's order nor an escape may change.
//! Only what differs from run to run is masked: ids become `0`, and the digits
//! of times become `0` (their shape stays pinned).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, TestUser, WsClient, spawn};

const GOLDEN: &str = include_str!("../golden/frames.txt");

/// `a` asks `b`, and `b` accepts.
async fn befriend(app: &TestApp, a: &TestUser, b: &TestUser) {
    assert_eq!(
        app.add_contact(&a.token, &b.name).await,
        StatusCode::ACCEPTED
    );
    let path = format!("/me/contacts/{}", a.id);
    assert_eq!(app.put(&path, &b.token, None).await.0, StatusCode::OK);
}

/// The frame with what varies masked.
fn masked(frame: &str) -> String {
    let mut out = frame.to_owned();
    for (key, inside_quotes) in [
        ("\"id\":", false),
        ("\"timestamp\":\"", true),
        ("\"expires_at\":\"", true),
    ] {
        let Some(at) = out.find(key) else { continue };
        let start = at + key.len();
        let value: String = out[start..]
            .chars()
            .take_while(|c| {
                if inside_quotes {
                    *c != '"'
                } else {
                    c.is_ascii_digit()
                }
            })
            .collect();
        let zeroed = if inside_quotes {
            value
                .chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect()
        } else {
            "0".to_owned()
        };
        out.replace_range(start..start + value.len(), &zeroed);
    }
    out
}

struct Transcript(Vec<String>);

impl Transcript {
    /// Reads `client`'s next frame under `label`.
    async fn next(&mut self, label: &str, client: &mut WsClient) -> String {
        let frame = client.text().await;
        self.0.push(format!("{label}\t{}", masked(&frame)));
        frame
    }
}

#[tokio::test]
async fn every_server_frame_is_written_as_the_golden_file_shows() {
    let app = spawn().await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    befriend(&app, &alice, &bob).await;
    befriend(&app, &alice, &carol).await;
    let mut seen = Transcript(Vec::new());

    let mut a = app.ws_manual(&alice.token).await;
    let mut b = app.ws(&bob.token).await;
    seen.next("online notice", &mut a).await;

    b.send_text("hello, \"everyone\" <b>你好</b> 👋").await;
    seen.next("broadcast", &mut a).await;

    b.send_json(json!({
        "recipient_username": "alice",
        "content": "line \"one\"\nline\ttwo \\ 你好 \u{1F600} </script>",
        "client_id": "c-1",
    }))
    .await;
    let direct = seen.next("p2p_message with id", &mut a).await;
    seen.next("sent", &mut b).await;
    let id = serde_json::from_str::<serde_json::Value>(&direct).unwrap()["id"]
        .as_i64()
        .unwrap();
    a.ack(&[id]).await;
    seen.next("delivered", &mut b).await;

    b.send_json(json!({"recipient_username": "alice", "content": "plain"}))
        .await;
    seen.next("p2p_message with id, no client_id", &mut a).await;

    a.send_json(json!({"recipient_username": "carol", "content": "while you were out"}))
        .await;
    seen.next("offline status", &mut a).await;
    let mut c = app.ws(&carol.token).await;
    seen.next("offline_message", &mut c).await;
    seen.next("online notice", &mut a).await;

    b.send_json(json!({"recipient_username": "nobody", "content": "x"}))
        .await;
    seen.next("error", &mut b).await;
    b.send_json(json!({"type": "auth", "token": bob.token}))
        .await;
    seen.next("authenticated", &mut b).await;

    let body = json!({"public_key": "pk-alice-new", "password": "pw-alice-secret"});
    let (status, answer) = app
        .put("/users/me/public-key", &alice.token, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    seen.next("key_changed", &mut b).await;
    seen.next("key_changed", &mut c).await;

    b.leave().await;
    seen.next("offline notice", &mut a).await;

    let dave = app.user("dave").await;
    let mut d = app.ws(&dave.token).await;
    assert_eq!(
        app.add_contact(&dave.token, "alice").await,
        StatusCode::ACCEPTED
    );
    seen.next("contact_request", &mut a).await;
    let path = format!("/me/contacts/{}", dave.id);
    assert_eq!(app.put(&path, &alice.token, None).await.0, StatusCode::OK);
    seen.next("contact_accepted", &mut d).await;
    let path = format!("/me/contacts/{}", alice.id);
    assert_eq!(
        app.delete(&path, &dave.token).await.0,
        StatusCode::NO_CONTENT
    );
    seen.next("contact_removed", &mut a).await;

    let typing = json!({"recipient_username": "carol", "content": "…", "ephemeral": true});
    a.send_json(typing).await;
    seen.next("ephemeral p2p_message", &mut c).await;
    a.send_json(
        json!({"recipient_username": "bob", "content": "…", "ephemeral": true, "client_id": "t-1"}),
    )
    .await;
    seen.next("not_delivered", &mut a).await;
    a.send_json(json!({"recipient_username": "nobody", "content": "x", "client_id": "c-2"}))
        .await;
    seen.next("error with client_id", &mut a).await;

    let written = seen.0.join("\n") + "\n";
    if std::env::var_os("SECCHAT_WRITE_GOLDEN").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/frames.txt");
        std::fs::write(path, &written).unwrap();
    }
    assert_eq!(
        written, GOLDEN,
        "the frames differ from tests/golden/frames.txt"
    );
}
