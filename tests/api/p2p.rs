use std::time::Duration;

use reqwest::StatusCode;
use secchat::config::Visibility;
use serde_json::json;

use crate::helpers::{eventually, password_of, spawn, spawn_with};

#[tokio::test]
async fn connection_info_for_a_consenting_online_user() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    app.login("bob", Some(6953)).await;
    let (status, info) = app.get("/users/bob/connection-info", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        info,
        json!({"username": "bob", "public_key": "pk-bob", "ip_address": "127.0.0.1", "port": 6953})
    );
    assert_eq!(
        app.get("/users/BOB/connection-info/", &alice.token).await.0,
        StatusCode::OK
    );
    // One's own info is visible to oneself.
    assert_eq!(
        app.get("/users/bob/connection-info", &bob.token).await.1["port"],
        6953
    );
}

#[tokio::test]
async fn unknown_offline_and_hidden_users_look_the_same() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let stranger = app.user("stranger").await;
    // Alice added carol, but carol never accepted alice: carol has not consented.
    let carol = app.user("carol").await;
    app.post(
        "/me/contacts/",
        &alice.token,
        json!({"friend_username": "carol"}),
    )
    .await;
    app.post("/logout", &bob.token, json!(null)).await;

    let unknown = app.get("/users/nobody/connection-info", &alice.token).await;
    let offline = app.get("/users/bob/connection-info", &alice.token).await;
    let hidden = app.get("/users/carol/connection-info", &alice.token).await;
    let stranger_view = app
        .get("/users/alice/connection-info", &stranger.token)
        .await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    for other in [&offline, &hidden, &stranger_view] {
        assert_eq!(other, &unknown);
    }
    drop(carol);
}

#[tokio::test]
async fn open_visibility_lets_any_signed_in_user_see_addresses() {
    let app = spawn_with(|s| s.presence.address_visibility = Visibility::Open).await;
    let alice = app.user("alice").await;
    let stranger = app.user("stranger").await;
    let (status, info) = app
        .get("/users/alice/connection-info", &stranger.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(info["port"].is_u64());
    drop(alice);
}

#[tokio::test]
async fn presence_is_a_lease_that_runs_out() {
    let app = spawn_with(|s| s.presence.presence_lease_secs = 1).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let located = |token: String| {
        let app = &app;
        async move { app.get("/users/bob/connection-info", &token).await.0 == StatusCode::OK }
    };
    assert!(located(alice.token.clone()).await);
    eventually("bob's lease runs out", || async {
        !located(alice.token.clone()).await
    })
    .await;
    // The heartbeat brings bob back.
    app.put(
        "/me/connection-info",
        &bob.token,
        Some(json!({"port": 5000})),
    )
    .await;
    assert!(located(alice.token.clone()).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!located(alice.token.clone()).await);
}

#[tokio::test]
async fn an_open_websocket_keeps_its_user_online() {
    let app = spawn_with(|s| s.presence.presence_lease_secs = 1).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let _socket = app.ws(&bob.token).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.get("/users/bob/connection-info", &alice.token).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusting =
        spawn_with(|s| s.listen.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let sceptic = spawn().await;
    for (app, expected) in [(&trusting, "203.0.113.7"), (&sceptic, "127.0.0.1")] {
        let (alice, bob) = app.friends("alice", "bob").await;
        let status = app
            .try_login("bob", &password_of("bob"), Some("203.0.113.7"))
            .await;
        assert_eq!(status, StatusCode::OK);
        let info = app.get("/users/bob/connection-info", &alice.token).await.1;
        assert_eq!(info["ip_address"], expected);
        drop(bob);
    }
}

/// Behind trusted proxies, the client is the right-most hop that is not a
/// proxy; when every hop is trusted, only the right-most one is believed (the
/// others may be the client's own words), and the port is the one the proxy
/// passed on with it, never the proxy's own source port.
#[tokio::test]
async fn forwarded_for_believes_only_what_a_trusted_proxy_wrote() {
    let app = spawn_with(|s| s.listen.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    for (xff, ip, port) in [
        ("127.9.9.9, 127.0.0.55:6100", "127.0.0.55", 6100),
        ("198.51.100.4:5000, 203.0.113.7:4242", "203.0.113.7", 4242),
        ("203.0.113.7", "203.0.113.7", 0),
    ] {
        let status = app.try_login("bob", &password_of("bob"), Some(xff)).await;
        assert_eq!(status, StatusCode::OK);
        let info = app.get("/users/bob/connection-info", &alice.token).await.1;
        assert_eq!(
            (info["ip_address"].as_str(), info["port"].as_u64()),
            (Some(ip), Some(port)),
            "{xff}"
        );
    }
    drop(bob);
}

/// HMAC-SHA1 written out from RFC 2104 over the SHA-1 function alone, so that
/// the test does not share the server's HMAC code.
fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha1::Digest;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..20].copy_from_slice(&sha1::Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = sha1::Sha1::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    sha1::Sha1::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[tokio::test]
async fn turn_credentials_follow_the_coturn_rest_api() {
    use base64::Engine as _;
    let off = spawn().await;
    let alice = off.user("alice").await;
    let (status, _) = off.get("/me/turn-credentials", &alice.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "off unless configured");

    let secret = "turn-shared-secret";
    let app = spawn_with(|s| {
        s.turn.turn_secret = Some(secrecy::SecretString::from(secret));
        s.turn.turn_uris = vec![
            "turn:turn.example.com:3478?transport=udp".into(),
            "turns:turn.example.com:5349".into(),
        ];
        s.turn.turn_ttl = 600;
    })
    .await;
    let alice = app.user("alice").await;
    let (status, _) = app
        .call(reqwest::Method::GET, "/me/turn-credentials", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let now = chrono::Utc::now().timestamp();
    let (status, creds) = app.get("/me/turn-credentials/", &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    let username = creds["username"].as_str().unwrap();
    let (expiry, user_id) = username.split_once(':').unwrap();
    assert_eq!(user_id.parse::<i64>().unwrap(), alice.id);
    let expiry: i64 = expiry.parse().unwrap();
    assert!(
        (now + 599..=now + 602).contains(&expiry),
        "{expiry} vs {now}"
    );
    let expected = base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(secret.as_bytes(), username.as_bytes()));
    assert_eq!(creds["password"], expected);
    assert_eq!(creds["ttl"], 600);
    assert_eq!(
        creds["uris"],
        json!([
            "turn:turn.example.com:3478?transport=udp",
            "turns:turn.example.com:5349"
        ])
    );

    // The relay's `authenticated` frame says whether credentials are handed
    // out, on connecting and on renewal, so that clients need not ask to find out.
    for (server, token, turn) in [
        (&off, &off.user("bob").await.token, false),
        (&app, &alice.token, true),
    ] {
        let (stream, _) = tokio_tungstenite::connect_async(server.ws_url(""))
            .await
            .expect("ws connects");
        let mut ws = crate::helpers::WsClient { stream };
        for _ in 0..2 {
            ws.send_json(json!({"type": "auth", "token": token})).await;
            let accepted = ws.json().await;
            assert_eq!(accepted["type"], "authenticated", "{accepted}");
            assert_eq!(accepted["turn"], turn, "{accepted}");
        }
    }
}

#[test]
fn turn_settings_are_checked() {
    use secchat::config::Settings;
    assert!(Settings::from_args(["--turn-uris", "turn:a.example:3478,stun:b.example"]).is_ok());
    for bad in ["http://a.example", "turn:", "turn:a b"] {
        assert!(Settings::from_args(["--turn-uris", bad]).is_err(), "{bad}");
    }
    assert!(Settings::from_args(["--turn-secret", ""]).is_err());
}
