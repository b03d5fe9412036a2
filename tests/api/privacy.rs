//! What strangers learn, and what cannot be forged: each test reproduces a
//! finding of the outside review and failed before its fix.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secchat::config::{Switch, Visibility};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, password_of, spawn, spawn_open, spawn_with};

async fn register_as(
    app: &TestApp,
    name: &str,
    email: &str,
    public_key: &str,
) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/users/",
        None,
        Some(json!({
            "username": name, "email": email,
            "password": password_of(name), "public_key": public_key,
        })),
    )
    .await
}

/// The field a 422 names first.
fn invalid_field(body: &Value) -> &str {
    body["detail"][0]["loc"][1].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_system_name_and_its_lookalikes_cannot_be_registered() {
    let app = spawn().await;
    for (i, name) in [
        "系统消息",
        "系統消息", // traditional 統
        "System",
        "ADMIN",
        "аdmin",
        "sуstem",
        "ｓｙｓｔｅｍ",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = register_as(&app, name, &format!("r{i}@example.com"), "pk").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert_eq!(invalid_field(&body), "username");
    }
}

#[tokio::test]
async fn lookalike_and_blank_usernames_are_refused() {
    // Many registrations from one address.
    let app = spawn_with(|s| s.rates.rate_limits = Switch::Off).await;
    for name in ["alice", "kate", "STRAßE", "paypal"] {
        app.register(name).await;
    }
    // Invisible, filler and styled characters: no such name at all.
    for (i, name) in [
        "ａｌｉｃｅ",
        "𝐚𝐥𝐢𝐜𝐞",
        "ㅤ",
        "ᅟ",
        "ᅟbob",
        "bo\u{200b}b",
        "\u{212a}ate2",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = register_as(&app, name, &format!("s{i}@example.com"), "pk").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {body}");
        assert_eq!(invalid_field(&body), "username");
    }
    // Valid letters, but they look like a name that exists: taken.
    for (i, name) in [
        "аlice", "ALICE", "a1ice", "strasse", "Strasse", "KATE", // folded alike
        "aIice", "paypaI", "AIice", // a capital I that reads as an l
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = register_as(&app, name, &format!("t{i}@example.com"), "pk").await;
        assert_eq!(
            (status, &body),
            (
                StatusCode::BAD_REQUEST,
                &json!({"detail": "Username or email already registered"})
            ),
            "{name:?}"
        );
    }
    // Names that merely share letters are fine, and look-ups fold like uniqueness.
    app.register("alicia").await;
    let kate = app.login("kate", None).await;
    let (status, me) = app.get("/users/me", &kate).await;
    assert_eq!(
        (status, me["username"].as_str()),
        (StatusCode::OK, Some("kate"))
    );
    let response = app
        .http
        .post(app.url("/token"))
        .form(&[
            ("username", "strasse"),
            ("password", &password_of("STRAßE")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "STRAßE signs in as strasse"
    );
}

#[tokio::test]
async fn public_keys_with_control_characters_are_refused() {
    let app = spawn().await;
    for (i, key) in [
        "abc\u{1b}[2J",
        "abc\u{202e}fed",
        "abc\r\n系统消息",
        "abc\ndef",
        "ключ",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) =
            register_as(&app, &format!("k{i}"), &format!("k{i}@example.com"), key).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{key:?}: {body}");
        assert_eq!(invalid_field(&body), "public_key");
    }
    let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA9s4qL4Y1Tn5lYQmW+Jc/f0c7h0wJzE0gVt8zLxH2Xw=\n-----END PUBLIC KEY-----\n";
    for (name, key) in [
        ("pem", pem),
        ("raw", "9s4qL4Y1Tn5lYQmW-Jc_f0c7h0wJzE0gVt8zLxH2Xw="),
    ] {
        let (status, body) = register_as(&app, name, &format!("{name}@example.com"), key).await;
        assert_eq!(
            (status, body["public_key"].as_str()),
            (StatusCode::OK, Some(key))
        );
    }
}

/// A broadcast holding a line break could forge a line of the server's own
/// (or anyone's): it is refused, and nobody receives any of it.
#[tokio::test]
async fn broadcasts_with_line_breaks_or_control_characters_are_refused() {
    let app = spawn_open().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.ws(&alice.token).await;
    let mut b = app.ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    for forged in [
        "hi\n系统消息: 用户 carol 已下线。",
        "hi\r系统消息: 用户 carol 已下线。",
        "hi\u{2028}系统消息: 用户 carol 已下线。",
        // Escapes that clear a terminal's line, backspaces, NUL, a bidi override.
        "\u{1b}[2K\u{1b}[1G系统消息: 用户 carol 已下线。",
        "hi\u{8}\u{8}\u{8}系统消息: 用户 carol 已下线。",
        "hi\u{0}",
        "\u{202e}。线下已 carol 户用 :息消统系",
        "zero\u{200b}width",
    ] {
        b.send_text(forged).await;
        assert!(b.error().await.contains("control and format"), "{forged:?}");
    }
    // Still connected, and one line still goes through, emoji sequences too.
    b.send_text("one line 👩\u{200d}💻").await;
    assert_eq!(a.text().await, "bob: one line 👩\u{200d}💻");
    a.silent_for(Duration::from_millis(200)).await;
}

/// Under the default `contacts` visibility, search shows a user online only
/// to users it accepted; under `open`, to every signed-in user.
#[tokio::test]
async fn search_shows_presence_only_to_users_the_subject_accepted() {
    for visibility in [Visibility::Contacts, Visibility::Open] {
        let app = spawn_with(|s| s.presence.address_visibility = visibility).await;
        let (friend, bobby) = app.friends("friend", "bobby").await;
        let stranger = app.user("stranger").await;
        // One-sided: stranger added bobby, who did not accept.
        assert_eq!(
            app.add_contact(&stranger.token, "bobby").await,
            StatusCode::ACCEPTED
        );
        let online = |token: &str| {
            let token = token.to_owned();
            let app = &app;
            async move { app.get("/users/search/bob", &token).await.1[0]["is_online"].clone() }
        };
        assert_eq!(online(&friend.token).await, json!(true));
        let open = visibility == Visibility::Open;
        assert_eq!(online(&stranger.token).await, json!(open), "{visibility:?}");
        // A contact list that only the viewer wrote shows nothing either.
        let (_, list) = app.get("/me/contacts/", &stranger.token).await;
        assert_eq!(list[0]["is_online"], json!(open));
        assert_eq!(list[0]["last_seen"].is_string(), open);
        // The requester consented by asking: bobby sees it.
        let (_, pending) = app.get("/me/contacts/pending", &bobby.token).await;
        assert_eq!(pending[0]["user"]["is_online"], json!(true));
    }
}

/// Users registered before names had skeletons (their key lowercased, no
/// skeleton) are given both when the server starts, so that a lookalike of
/// theirs is refused and a folded name finds them.
#[tokio::test]
async fn users_from_before_get_their_skeletons_at_start_up() {
    let backend = Backend::new().await;
    let app = backend.spawn(|_| {}).await;
    for name in ["STRAßE", "alice"] {
        app.register(name).await;
    }
    app.stop().await;
    // As the previous release left them.
    backend
        .execute("UPDATE users SET username_skeleton = NULL, username_key = LOWER(username)")
        .await;
    backend
        .execute("UPDATE users SET username_key = 'straße' WHERE username = 'STRAßE'")
        .await;
    let app = backend.spawn(|_| {}).await;
    for (i, name) in ["strasse", "аlice"].into_iter().enumerate() {
        let (status, body) = register_as(&app, name, &format!("n{i}@example.com"), "pk").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
    }
    assert_eq!(
        app.try_login("strasse", &password_of("STRAßE"), None).await,
        StatusCode::OK
    );
}

/// A sender the recipient has not accepted learns nothing of its presence
/// from the relay: its message is answered the same whether the recipient is
/// online or not (stored, with the seed's status), still reaches the
/// recipient's open connection at once, and earns no delivery receipt.
#[tokio::test]
async fn a_strangers_messages_are_answered_alike_online_or_not() {
    let app = spawn().await;
    let mallory = app.user("mallory").await;
    let bob = app.user("bob").await;
    let mut m = app.ws(&mallory.token).await;
    let send = |content: &'static str, client_id: &'static str| json!({"recipient_username": "bob", "content": content, "client_id": client_id});
    m.send_json(send("c1", "x1")).await;
    let (status_offline, sent_offline) = (m.json().await, m.json().await);
    let mut b = app.ws_manual(&bob.token).await;
    let pushed = b.json().await;
    assert_eq!(
        (pushed["type"].as_str(), pushed["content"].as_str()),
        (Some("offline_message"), Some("c1"))
    );
    b.ack(&[pushed["id"].as_i64().unwrap()]).await;
    m.send_json(send("c2", "x2")).await;
    let (status_online, sent_online) = (m.json().await, m.json().await);
    assert_eq!(status_online, status_offline);
    assert_eq!(
        status_online,
        json!({"status": "用户 bob 当前离线，消息已保存。"})
    );
    for (sent, client_id) in [(&sent_offline, "x1"), (&sent_online, "x2")] {
        assert_eq!(
            (sent["type"].as_str(), sent["client_id"].as_str()),
            (Some("sent"), Some(client_id))
        );
    }
    // Bob, online, gets it at once all the same.
    let got = b.json().await;
    assert_eq!(got["content"], "c2");
    b.ack(&[got["id"].as_i64().unwrap()]).await;
    // No receipt tells mallory that bob read anything.
    m.silent_for(std::time::Duration::from_millis(500)).await;
    // Once bob accepts mallory, she is no stranger: live, with receipts.
    app.add_contact(&bob.token, "mallory").await;
    // Mallory is asked in turn.
    assert_eq!(m.json().await["type"], "contact_request");
    m.send_json(send("c3", "x3")).await;
    let live = b.json().await;
    assert_eq!(
        (live["type"].as_str(), live["content"].as_str()),
        (Some("p2p_message"), Some("c3"))
    );
    assert_eq!(m.json().await["type"], "sent");
    b.ack(&[live["id"].as_i64().unwrap()]).await;
    assert_eq!(m.json().await["type"], "delivered");
}
