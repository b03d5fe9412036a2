//! Both generations of clients, end to end, against one server.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{password_of, spawn};

/// A client written for the seed document: friend_username, the online panel,
/// connection info, offline messages over HTTP, and plain text on the WebSocket.
#[tokio::test]
async fn a_seed_client_works_unchanged() {
    let app = spawn().await;
    for name in ["user1_example", "user2_example"] {
        app.register(name).await;
    }
    // Login with multipart form-data, as the seed says.
    let form = reqwest::multipart::Form::new()
        .text("username", "user1_example")
        .text("password", password_of("user1_example"));
    let token1: serde_json::Value = app
        .http
        .post(app.url("/token"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token1 = token1["access_token"].as_str().unwrap().to_owned();
    let token2 = app.login("user2_example", Some(6953)).await;
    app.post(
        "/me/contacts/",
        &token1,
        json!({"friend_username": "user2_example"}),
    )
    .await;
    app.post(
        "/me/contacts/",
        &token2,
        json!({"friend_username": "user1_example"}),
    )
    .await;

    let (_, contacts) = app.get("/me/contacts/", &token1).await;
    assert_eq!(contacts[0]["username"], "user2_example");
    assert!(contacts[0]["id"].is_i64() && contacts[0]["is_online"] == true);

    let (_, online) = app.get("/me/contacts/online", &token1).await;
    assert_eq!(online[0]["username"], "user2_example");
    assert_eq!(online[0]["public_key"], "pk-user2_example");
    assert_eq!(online[0]["port"], 6953);

    let (status, info) = app
        .get("/users/user2_example/connection-info", &token1)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (info["ip_address"].as_str(), info["port"].as_u64()),
        (Some("127.0.0.1"), Some(6953))
    );

    // P2P failed: the WebSocket relay.
    let mut ws1 = app.ws(&token1).await;
    let mut ws2 = app.ws(&token2).await;
    assert_eq!(ws1.text().await, "系统消息: 用户 user2_example 已上线。");
    ws1.send_text("SGVsbG8=").await;
    // user1's own notice may still reach user2 through Redis.
    assert_eq!(
        ws2.text_but_notices_of(&["user1_example"]).await,
        "user1_example: SGVsbG8="
    );

    // user2 leaves; user1 stores an offline message, user2 fetches it once.
    drop(ws2);
    assert_eq!(ws1.text().await, "系统消息: 用户 user2_example 已下线。");
    let (_, sent) = app
        .post(
            "/messages/",
            &token1,
            json!({"recipient_username": "user2_example", "encrypted_content": "SGVsbG8gd29ybGQh"}),
        )
        .await;
    let (_, inbox) = app.get("/messages/", &token2).await;
    assert_eq!(inbox, json!([sent]));
    assert_eq!(app.get("/messages/", &token2).await.1, json!([]));

    let (status, body) = app.post("/logout", &token1, json!(null)).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::OK, Some("Logged out successfully"))
    );
}

/// A client written for the later revision: search, friend_id, pending and
/// accept, the heartbeat, directed JSON frames, and offline messages pushed on
/// connect.
#[tokio::test]
async fn a_revision_client_works_unchanged() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    // Bob is online, but has not accepted alice: she does not see it.
    let (_, found) = app.get("/users/search/bob", &alice.token).await;
    assert_eq!(
        found,
        json!([{"id": bob.id, "username": "bob", "is_online": false}])
    );
    let (status, _) = app
        .post(
            "/me/contacts/",
            &alice.token,
            json!({"friend_id": found[0]["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, pending) = app.get("/me/contacts/pending", &bob.token).await;
    let requester = pending[0]["user_id"].as_i64().unwrap();
    let (status, _) = app
        .put(&format!("/me/contacts/{requester}"), &bob.token, None)
        .await;
    assert_eq!(status, StatusCode::OK);

    for token in [&alice.token, &bob.token] {
        let (status, _) = app
            .put("/me/connection-info", token, Some(json!({"port": 40000})))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        app.get("/users/bob/connection-info", &alice.token).await.1["port"],
        40000
    );

    let mut a = app.ws(&alice.token).await;
    a.send_json(json!({"recipient_username": "bob", "content": "while you were away"}))
        .await;
    assert_eq!(a.json().await["status"], "用户 bob 当前离线，消息已保存。");
    let mut b = app.ws(&bob.token).await;
    let pushed = b.json().await;
    assert_eq!(
        (pushed["type"].as_str(), pushed["content"].as_str()),
        (Some("offline_message"), Some("while you were away"))
    );
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    b.send_json(json!({"recipient_username": "alice", "content": "got it"}))
        .await;
    let reply = a.json().await;
    assert_eq!(
        (reply["type"].as_str(), reply["sender_username"].as_str()),
        (Some("p2p_message"), Some("bob"))
    );

    // Unfriend: no more addresses.
    app.delete(&format!("/me/contacts/{}", alice.id), &bob.token)
        .await;
    assert_eq!(
        app.get("/users/bob/connection-info", &alice.token).await.0,
        StatusCode::NOT_FOUND
    );
    b.silent_for(Duration::from_millis(100)).await;
}
