use std::{collections::HashSet, time::Duration};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use secchat::config::{Switch, Visibility};
use serde_json::{Value, json};
use tokio_tungstenite::{connect_async, tungstenite::Message};

use crate::helpers::{JWT_SECRET, TestApp, eventually, spawn, spawn_open, spawn_with};

fn forge(alg: Algorithm, secret: &str, claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn online_notice(name: &str) -> String {
    format!("系统消息: 用户 {name} 已上线。")
}

fn offline_notice(name: &str) -> String {
    format!("系统消息: 用户 {name} 已下线。")
}

async fn refused(app: &TestApp, query: &str) -> (u16, String) {
    let (stream, _) = connect_async(app.ws_url(query))
        .await
        .expect("the upgrade itself succeeds");
    let mut client = crate::helpers::WsClient { stream };
    client.closed().await
}

#[tokio::test]
async fn bad_tokens_are_closed_with_1008() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| json!({"sub": "alice", "uid": alice.id, "iat": now, "exp": exp, "jti": "forged"});
    let unsigned = {
        // alg "none": header and claims, no signature.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims(now + 600).to_string())
        )
    };
    // Without any token the server waits for an auth frame first
    // (`tokens_may_stay_out_of_the_url`).
    let cases = [
        "?token=".to_owned(),
        "?token=garbage".into(),
        format!(
            "?token={}",
            forge(Algorithm::HS256, JWT_SECRET, claims(now - 600))
        ),
        format!(
            "?token={}",
            forge(Algorithm::HS512, JWT_SECRET, claims(now + 600))
        ),
        format!(
            "?token={}",
            forge(
                Algorithm::HS256,
                "some-other-secret-some-other-secret",
                claims(now + 600)
            )
        ),
        format!("?token={unsigned}"),
    ];
    for query in cases {
        let (code, reason) = refused(&app, &query).await;
        assert_eq!(code, 1008, "{query}");
        assert!(!reason.is_empty());
    }
    // The same forgeries are 401 over HTTP.
    for token in [
        forge(Algorithm::HS256, JWT_SECRET, claims(now - 600)),
        unsigned,
    ] {
        assert_eq!(
            app.get("/users/me", &token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // A token signed with the right secret and algorithm is accepted.
    let genuine = forge(Algorithm::HS256, JWT_SECRET, claims(now + 600));
    assert_eq!(app.get("/users/me", &genuine).await.0, StatusCode::OK);
}

/// A token signed with the server's own key is still refused unless its `sub`
/// and `uid` name one existing user.
#[tokio::test]
async fn tokens_must_name_an_existing_user_by_name_and_id() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let now = chrono::Utc::now().timestamp();
    let token = |sub: &str, uid: i64| {
        let jti = uuid::Uuid::new_v4().simple().to_string();
        let claims = json!({"sub": sub, "uid": uid, "iat": now, "exp": now + 600, "jti": jti});
        forge(Algorithm::HS256, JWT_SECRET, claims)
    };
    for (sub, uid) in [
        ("mallory", alice.id),
        ("bob", alice.id),
        ("alice", bob.id),
        ("alice", alice.id + bob.id + 1000),
    ] {
        let forged = token(sub, uid);
        let (status, _) = app.get("/users/me", &forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "sub {sub}, uid {uid}");
        let (code, _) = refused(&app, &format!("?token={forged}")).await;
        assert_eq!(code, 1008, "sub {sub}, uid {uid}");
    }
    let (status, me) = app.get("/users/me", &token("alice", alice.id)).await;
    assert_eq!(
        (status, me["id"].as_i64()),
        (StatusCode::OK, Some(alice.id))
    );
}

#[tokio::test]
async fn logout_closes_that_tokens_sockets_and_refuses_it_afterwards() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let phone_token = app.login("alice", None).await;
    let mut laptop = app.ws(&alice.token).await;
    let mut phone = app.ws(&phone_token).await;
    app.post("/logout", &alice.token, json!(null)).await;
    assert_eq!(laptop.closed().await.0, 1008);
    let (code, _) = refused(&app, &format!("?token={}", alice.token)).await;
    assert_eq!(code, 1008);
    // The other device is untouched and keeps the user online.
    phone.send_text("still here").await;
    phone.silent_for(Duration::from_millis(200)).await;
    let (status, me) = app.get("/users/me", &phone_token).await;
    assert_eq!(
        (status, me["is_online"].as_bool()),
        (StatusCode::OK, Some(true))
    );
}

#[tokio::test]
async fn join_and_leave_notices_are_per_user() {
    let app = spawn_open().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut watcher = app.ws(&alice.token).await;
    let mut first = app.ws(&bob.token).await;
    assert_eq!(watcher.text().await, online_notice("bob"));
    let mut second = app.ws(&bob.token).await;
    first.stream.close(None).await.unwrap();
    // A second device joining or one of two leaving says nothing.
    watcher.silent_for(Duration::from_millis(300)).await;
    second.stream.close(None).await.unwrap();
    assert_eq!(watcher.text().await, offline_notice("bob"));
}

/// By default (`contacts` visibility) a user's notices reach only the users
/// it accepted: not one who merely added it, nor a stranger.
#[tokio::test]
async fn notices_reach_only_users_the_subject_accepted() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let (carol, dave) = (app.user("carol").await, app.user("dave").await);
    // carol added bob; bob has only a request from her.
    assert_eq!(
        app.add_contact(&carol.token, "bob").await,
        StatusCode::ACCEPTED
    );
    let mut alice_ws = app.ws(&alice.token).await;
    let mut carol_ws = app.ws(&carol.token).await;
    let mut dave_ws = app.ws(&dave.token).await;
    let bob_ws = app.ws(&bob.token).await;
    assert_eq!(alice_ws.text().await, online_notice("bob"));
    drop(bob_ws);
    assert_eq!(alice_ws.text().await, offline_notice("bob"));
    carol_ws.silent_for(Duration::from_millis(300)).await;
    dave_ws.silent_for(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn text_frames_are_broadcast_to_every_other_user() {
    let app = spawn_open().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.ws(&alice.token).await;
    let mut b = app.ws(&bob.token).await;
    assert_eq!(a.text().await, online_notice("bob"));
    let mut c = app.ws(&carol.token).await;
    assert_eq!(a.text().await, online_notice("carol"));
    // Nobody saw alice's own notice go by: through Redis it may still reach
    // bob and carol, who connected just after her.
    assert_eq!(
        b.text_but_notices_of(&["alice"]).await,
        online_notice("carol")
    );
    let mut a2 = app.ws(&alice.token).await;

    a.send_text("hello, 世界").await;
    assert_eq!(b.text().await, "alice: hello, 世界");
    assert_eq!(
        c.text_but_notices_of(&["alice"]).await,
        "alice: hello, 世界"
    );
    // Not to the sender, on any of its devices.
    a.silent_for(Duration::from_millis(200)).await;
    a2.silent_for(Duration::from_millis(10)).await;
    // JSON that is not an object is text too.
    b.send_text("[1, 2]").await;
    assert_eq!(c.text().await, "bob: [1, 2]");
}

#[tokio::test]
async fn directed_messages_reach_every_device_of_the_recipient_only() {
    let app = spawn_open().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut c = app.ws(&carol.token).await;
    let mut b1 = app.ws(&bob.token).await;
    let mut b2 = app.ws(&bob.token).await;
    let mut a = app.ws(&alice.token).await;
    for _ in 0..2 {
        c.text().await; // bob's and alice's notices
    }
    b1.text().await;
    b2.text().await;
    a.send_json(json!({"recipient_username": "Bob", "content": "ciphertext=="}))
        .await;
    for device in [&mut b1, &mut b2] {
        let frame = device.json().await;
        assert_eq!(frame["type"], "p2p_message");
        assert_eq!(frame["sender_username"], "alice");
        assert_eq!(frame["content"], "ciphertext==");
        assert!(frame["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    c.silent_for(Duration::from_millis(200)).await;
    a.silent_for(Duration::from_millis(10)).await;
    assert_eq!(
        app.get("/messages/", &bob.token).await.1,
        json!([]),
        "delivered, so not stored"
    );
}

#[tokio::test]
async fn directed_messages_to_offline_users_are_stored_and_pushed_on_connect() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.ws(&alice.token).await;
    for i in 0..3 {
        a.send_json(
            json!({"recipient_username": "bob", "content": format!("m{i}"), "extra": true}),
        )
        .await;
        assert_eq!(
            a.json().await,
            json!({"status": "用户 bob 当前离线，消息已保存。"})
        );
    }
    let mut b = app.ws(&bob.token).await;
    for i in 0..3 {
        let frame = b.json().await;
        assert_eq!(frame["type"], "offline_message");
        assert_eq!(frame["sender_username"], "alice");
        assert_eq!(frame["content"], format!("m{i}"));
        assert!(frame["timestamp"].is_string());
    }
    // Written, so read: neither a fetch nor the next connection sees them again.
    eventually("marked read", || async {
        app.get("/messages/", &bob.token).await.1 == json!([])
    })
    .await;
    let mut again = app.ws(&bob.token).await;
    again.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_open() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    app.register("bob").await;
    let mut a = app.ws(&alice.token).await;
    let bad = [
        json!({"recipient_username": "nobody", "content": "x"}),
        json!({"hello": "world"}),
        json!({"recipient_username": "bob"}),
        json!({"recipient_username": 5, "content": "x"}),
        json!({"recipient_username": "bob", "content": {"nested": true}}),
        json!({"recipient_username": "bob", "content": ""}),
    ];
    for frame in bad {
        a.send_json(frame.clone()).await;
        let reply = a.json().await;
        assert!(reply["error"].is_string(), "{frame} got {reply}");
        assert!(
            !reply.to_string().contains("nobody"),
            "input echoed: {reply}"
        );
    }
    // Each names the message it refuses, if the client named it.
    for frame in [
        json!({"recipient_username": "bob", "client_id": "m1"}),
        json!({"recipient_username": "nobody", "content": "x", "client_id": "m2"}),
    ] {
        a.send_json(frame.clone()).await;
        let reply = a.json().await;
        assert!(reply["error"].is_string(), "{frame} got {reply}");
        assert_eq!(
            reply["client_id"], frame["client_id"],
            "{frame} got {reply}"
        );
    }
    a.stream.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert!(a.json().await["error"].is_string());
    a.send_json(json!({"recipient_username": "bob", "content": "after all that"}))
        .await;
    assert!(
        a.json().await["status"].is_string(),
        "still open and working"
    );
}

#[tokio::test]
async fn oversized_frames_are_never_relayed() {
    let app = spawn_with(|s| {
        s.delivery.max_message_bytes = 1024;
        s.presence.address_visibility = Visibility::Open;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut b = app.ws(&bob.token).await;
    let mut a = app.ws(&alice.token).await;
    assert_eq!(b.text().await, online_notice("alice"));
    a.send_text(&"x".repeat(2000)).await;
    assert_eq!(a.closed().await.0, 1009);
    assert_eq!(
        b.text().await,
        offline_notice("alice"),
        "nothing relayed before the leave notice"
    );
}

#[tokio::test]
async fn the_server_pings_and_drops_silent_clients() {
    let app = spawn_with(|s| {
        s.listen.ws_ping_secs = 1;
        s.presence.address_visibility = Visibility::Open;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut watcher = app.ws(&alice.token).await;
    let silent = app.ws(&bob.token).await;
    assert_eq!(watcher.text().await, online_notice("bob"));
    // The watcher reads (so answers pings) and is pinged.
    let ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = watcher.stream.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping within 3 s");
    // Bob never reads, so never answers: he is dropped and the watcher told.
    assert_eq!(watcher.text().await, offline_notice("bob"));
    drop(silent);
}

/// A reader too slow for its outbox is cut off with 1013, learns why when it
/// reads again, and loses nothing: what it did not get is stored offline.
/// Deterministic on a busy machine: alice sends until the server itself says
/// bob is offline, however many frames that takes.
#[tokio::test]
async fn a_slow_reader_is_cut_off_without_losing_directed_messages() {
    let app = spawn_with(|s| {
        s.listen.ws_queue_len = 8;
        s.rates.rate_limits = Switch::Off; // alice sends as fast as she can
    })
    .await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut slow = app.ws(&bob.token).await;
    let (mut to_server, mut from_server) = app.ws(&alice.token).await.stream.split();
    let cut_off = tokio_util::sync::CancellationToken::new();
    // Large frames fill bob's socket buffers, then his outbox, while he reads nothing.
    let sender = tokio::spawn({
        let cut_off = cut_off.clone();
        async move {
            let padding = "p".repeat(60 * 1024);
            let mut sent = 0;
            while !cut_off.is_cancelled() {
                assert!(sent < 3000, "bob was never cut off");
                let frame =
                    json!({"recipient_username": "bob", "content": format!("{sent:04}{padding}")});
                to_server
                    .send(Message::text(frame.to_string()))
                    .await
                    .unwrap();
                sent += 1;
            }
            (sent, to_server)
        }
    });
    // Alice reads her replies (so that only bob is slow): bob's leave notice,
    // or the first "stored" status, means his connection is gone.
    let replies = tokio::spawn(async move {
        while let Some(Ok(frame)) = from_server.next().await {
            if let Message::Text(text) = frame {
                if text.as_str() == offline_notice("bob") {
                    cut_off.cancel();
                    continue;
                }
                let reply: Value = serde_json::from_str(&text).unwrap();
                assert!(reply.get("error").is_none(), "{reply}");
                if reply["status"].as_str().is_some_and(|s| s.contains("离线")) {
                    cut_off.cancel();
                }
            }
        }
    });
    let (sent, mut to_server) = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("bob is cut off within a minute")
        .unwrap();
    // Now bob reads what reached his socket, up to the close.
    let mut received = HashSet::new();
    let close_code = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), slow.stream.next())
            .await
            .expect("bob's frames, then the close, in time")
            .expect("a close frame before the end")
            .expect("a valid frame");
        match frame {
            // Besides alice's messages, only the notice that she came online.
            Message::Text(text) if text.as_str() == online_notice("alice") => {}
            Message::Text(text) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "p2p_message");
                let id = v["content"].as_str().unwrap()[..4].to_owned();
                assert!(received.insert(id), "delivered twice");
            }
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    };
    assert_eq!(close_code, Some(1013), "the slow reader learns why");
    // The rest were stored as offline messages: every message exactly once.
    let mut stored = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() + stored.len() < sent {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} + {} of {sent} accounted for",
            received.len(),
            stored.len()
        );
        for m in app
            .get("/messages/", &bob.token)
            .await
            .1
            .as_array()
            .unwrap()
        {
            let id = m["encrypted_content"].as_str().unwrap()[..4].to_owned();
            assert!(!received.contains(&id), "{id} both delivered and stored");
            assert!(stored.insert(id), "stored twice");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received.len() + stored.len(), sent);
    assert!(
        !stored.is_empty(),
        "the test must overflow bob's connection"
    );
    // Alice's own connection was never affected.
    to_server.send(Message::text("still fine")).await.unwrap();
    replies.abort();
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let mut a = app.ws(&alice.token).await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(a.closed().await.0, 1001);
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_client_that_stopped_reading_is_let_go_without_its_help() {
    let app = spawn_with(|s| {
        s.listen.ws_queue_len = 8;
        s.presence.address_visibility = Visibility::Open;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut watcher = app.ws(&carol.token).await;
    let stuck = app.ws(&bob.token).await;
    assert_eq!(watcher.text().await, online_notice("bob"));
    let (mut to_server, mut from_server) = app.ws(&alice.token).await.stream.split();
    // Alice reads whatever comes back, so that only bob is slow.
    let drain = tokio::spawn(async move { while from_server.next().await.is_some() {} });
    // Large frames fill bob's socket buffers, then his outbox; he reads
    // nothing. Alice sends until bob is gone, however long that takes here.
    let cut_off = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn({
        let cut_off = cut_off.clone();
        async move {
            let padding = "p".repeat(60 * 1024);
            for i in 0..3000 {
                if cut_off.is_cancelled() {
                    return;
                }
                let frame =
                    json!({"recipient_username": "bob", "content": format!("{i:04}{padding}")});
                to_server
                    .send(Message::text(frame.to_string()))
                    .await
                    .unwrap();
            }
            panic!("bob was never cut off");
        }
    });
    // Cut off, he is let go although he still reads nothing: the server does
    // not wait on his full socket to announce him gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(deadline, watcher.stream.next())
            .await
            .expect("bob's leave notice within a minute");
        match next {
            Some(Ok(Message::Text(text))) if text.as_str() == offline_notice("bob") => break,
            Some(Ok(_)) => {}
            other => panic!("the watcher's connection failed: {other:?}"),
        }
    }
    cut_off.cancel();
    sender.await.unwrap();
    drop(stuck);
    drain.abort();
}

/// Besides `?token=`, the token may come in the `Authorization` header, or as
/// the first frame within `WS_AUTH_TIMEOUT_SECS`: a late, different or bad
/// first frame is refused with 1008.
#[tokio::test]
async fn tokens_may_stay_out_of_the_url() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    // Long enough for a busy machine to carry the first frame; short enough
    // to wait for in full.
    let app = spawn_with(|s| s.listen.ws_auth_timeout_secs = 3).await;
    let (alice, bob) = app.friends("alice", "bob").await;

    let mut request = app.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", bob.token).parse().unwrap(),
    );
    let (stream, _) = connect_async(request).await.expect("ws connects");
    let mut by_header = crate::helpers::WsClient { stream };

    let (stream, _) = connect_async(app.ws_url("")).await.expect("ws connects");
    let mut by_frame = crate::helpers::WsClient { stream };
    by_frame
        .send_json(json!({"type": "auth", "token": alice.token}))
        .await;
    let accepted = by_frame.json().await;
    assert_eq!(accepted["type"], "authenticated", "{accepted}");
    assert_eq!(by_header.text().await, online_notice("alice"));
    by_frame
        .send_json(json!({"recipient_username": "bob", "content": "no token in any URL"}))
        .await;
    assert_eq!(by_header.json().await["content"], "no token in any URL");

    for (first, reason) in [
        (Some("hello"), "the first frame must be"),
        (
            Some(r#"{"type": "auth", "token": "not.a.token"}"#),
            "invalid or expired token",
        ),
        (None, "no auth frame in time"),
    ] {
        let (stream, _) = connect_async(app.ws_url("")).await.expect("ws connects");
        let mut client = crate::helpers::WsClient { stream };
        if let Some(first) = first {
            client.send_text(first).await;
        }
        let (code, why) = client.closed().await;
        assert_eq!(code, 1008);
        assert!(why.contains(reason), "{why}");
    }
}
