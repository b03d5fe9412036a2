//! The account controls: changing the password, logging out everywhere,
//! rotating the public key, deleting the account, and WebSocket sessions
//! that end with their token unless renewed in-band.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, eventually, password_of, spawn, spawn_with};

async fn change_password(app: &TestApp, token: &str, old: &str, new: &str) -> StatusCode {
    app.put(
        "/users/me/password",
        token,
        Some(json!({"old_password": old, "new_password": new})),
    )
    .await
    .0
}

#[tokio::test]
async fn a_password_change_ends_every_other_session() {
    let app = spawn().await;
    let alice = app.user("alice").await;
    let stolen = app.login("alice", None).await;
    let mut thief_ws = app.ws(&stolen).await;
    let mut own_ws = app.ws(&alice.token).await;

    // A wrong old password changes nothing.
    assert_eq!(
        change_password(&app, &alice.token, "guess", "new-secret").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get("/users/me", &stolen).await.0, StatusCode::OK);
    // An invalid new one neither.
    assert_eq!(
        change_password(&app, &alice.token, &password_of("alice"), "").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let (status, body) = app
        .put(
            "/users/me/password/",
            &alice.token,
            Some(json!({"old_password": password_of("alice"), "new_password": "new-secret"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["detail"].is_string());
    assert_eq!(thief_ws.closed().await.0, 1008);
    assert_eq!(
        app.get("/users/me", &stolen).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The token used stays valid, and its WebSocket open.
    assert_eq!(app.get("/users/me", &alice.token).await.0, StatusCode::OK);
    own_ws.send_text("still here").await;
    own_ws.silent_for(Duration::from_millis(200)).await;
    assert_eq!(
        app.try_login("alice", &password_of("alice"), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.try_login("alice", "new-secret", None).await,
        StatusCode::OK
    );
}

/// Wrong old passwords count as failed logins: after the free ones, the
/// account is locked out, for the password form and the login form alike.
#[tokio::test]
async fn wrong_old_passwords_are_counted_like_failed_logins() {
    let app = spawn_with(|s| {
        s.rates.login_free_failures = 2;
        s.rates.login_lockout_secs = 60;
    })
    .await;
    let alice = app.user("alice").await;
    for _ in 0..2 {
        assert_eq!(
            change_password(&app, &alice.token, "guess", "long-new-password").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // That session is locked out of its account controls...
    assert_eq!(
        change_password(
            &app,
            &alice.token,
            &password_of("alice"),
            "long-new-password"
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...but not the owner: a login works, and its session may change the
    // password with the right one.
    let fresh = app.login("alice", None).await;
    assert_eq!(
        change_password(&app, &fresh, &password_of("alice"), "n3w-password").await,
        StatusCode::OK
    );
}

/// Failed logins from anywhere lock out their own address, never the owner's
/// account controls nor its logins from elsewhere: someone who knows only a
/// name cannot keep its owner out.
#[tokio::test]
async fn nobody_elses_failed_logins_lock_the_owner_out() {
    let app = spawn_with(|s| {
        s.rates.login_free_failures = 2;
        s.rates.login_lockout_secs = 60;
        s.listen.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let alice = app.user("alice").await;
    let guess = |password: &'static str| {
        app.http
            .post(app.url("/token"))
            .header("X-Forwarded-For", "203.0.113.66")
            .form(&[("username", "alice"), ("password", password)])
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            guess("guess").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        guess("guess").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        guess("also locked").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.try_login("alice", &password_of("alice"), None).await,
        StatusCode::OK
    );
    assert_eq!(
        change_password(&app, &alice.token, &password_of("alice"), "n3w-password").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn logging_out_everywhere_ends_every_session_and_presence() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let phone = app.login("alice", Some(7000)).await;
    let mut sockets = [app.ws(&alice.token).await, app.ws(&phone).await];
    let (_, online) = app.get("/me/contacts/online", &bob.token).await;
    assert_eq!(online[0]["username"], "alice");

    let (status, body) = app.post("/logout/all", &phone, json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for socket in &mut sockets {
        assert_eq!(socket.closed().await.0, 1008);
    }
    for token in [&alice.token, &phone] {
        assert_eq!(
            app.get("/users/me", token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.get("/me/contacts/online", &bob.token).await.1,
        json!([])
    );
    // Logging in again works, and is a new session.
    let again = app.login("alice", None).await;
    assert_eq!(app.get("/users/me", &again).await.0, StatusCode::OK);
    assert_eq!(
        app.call(Method::POST, "/logout/all", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_new_public_key_reaches_contacts_online_and_offline() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    assert_eq!(
        app.add_contact(&carol.token, "alice").await,
        StatusCode::ACCEPTED
    );
    let dave = app.user("dave").await;
    let mut bob_ws = app.ws(&bob.token).await;
    let mut dave_ws = app.ws(&dave.token).await;
    // bob sees alice's old key in his online panel (and caches it).
    app.put(
        "/me/connection-info",
        &alice.token,
        Some(json!({"port": 5000})),
    )
    .await;
    let (_, panel) = app.get("/me/contacts/online", &bob.token).await;
    assert_eq!(panel[0]["public_key"], "pk-alice");

    let (status, _) = app
        .put(
            "/users/me/public-key",
            &alice.token,
            Some(json!({"public_key": "bad\u{1b}key", "password": password_of("alice")})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, me) = app
        .put(
            "/users/me/public-key/",
            &alice.token,
            Some(json!({"public_key": "bmV3LWtleQ==", "password": password_of("alice")})),
        )
        .await;
    assert_eq!(
        (status, me["public_key"].as_str()),
        (StatusCode::OK, Some("bmV3LWtleQ=="))
    );
    assert_eq!(me["username"], "alice");

    let frame = bob_ws.json().await;
    assert_eq!(
        frame,
        json!({"type": "key_changed", "username": "alice", "public_key": "bmV3LWtleQ=="})
    );
    dave_ws.silent_for(Duration::from_millis(200)).await;
    // Offline or not, contacts see the new key and when it changed.
    for token in [&bob.token, &carol.token] {
        let (_, list) = app.get("/me/contacts/", token).await;
        assert_eq!(list[0]["public_key"], "bmV3LWtleQ==");
        assert!(list[0]["key_changed_at"].is_string(), "{list}");
        assert_eq!(
            list[0]["friend"]["key_changed_at"],
            list[0]["key_changed_at"]
        );
    }
    let (_, panel) = app.get("/me/contacts/online", &bob.token).await;
    assert_eq!(panel[0]["public_key"], "bmV3LWtleQ==");
    let (_, info) = app.get("/users/alice/connection-info", &bob.token).await;
    assert_eq!(info["public_key"], "bmV3LWtleQ==");
}

#[tokio::test]
async fn deleting_an_account_removes_it_and_keeps_its_name() {
    let app = spawn().await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    assert_eq!(
        app.add_contact(&alice.token, "carol").await,
        StatusCode::ACCEPTED
    );
    // Stored both ways: from alice to bob, and from carol to alice.
    app.post(
        "/messages/",
        &alice.token,
        json!({"recipient_username": "bob", "encrypted_content": "from alice"}),
    )
    .await;
    app.post(
        "/messages/",
        &carol.token,
        json!({"recipient_username": "alice", "encrypted_content": "to alice"}),
    )
    .await;
    let mut alice_ws = app.ws(&alice.token).await;

    let delete = |password: String| {
        let app = &app;
        let token = alice.token.clone();
        async move {
            app.http
                .delete(app.url("/users/me"))
                .bearer_auth(token)
                .json(&json!({"password": password}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(delete("guess".into()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/users/me", &alice.token).await.0, StatusCode::OK);
    assert_eq!(delete(password_of("alice")).await, StatusCode::NO_CONTENT);

    assert_eq!(alice_ws.closed().await.0, 1008);
    assert_eq!(
        app.get("/users/me", &alice.token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.try_login("alice", &password_of("alice"), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get("/me/contacts/", &bob.token).await.1, json!([]));
    assert_eq!(
        app.get("/me/contacts/pending", &carol.token).await.1,
        json!([])
    );
    assert!(
        app.inbox(&bob.token).await.is_empty(),
        "its messages are gone"
    );
    assert_eq!(app.stored_like("to alice").await, 0);
    assert_eq!(app.get("/users/search/ali", &bob.token).await.1, json!([]));
    // Nobody reaches it any more, by any path.
    let (status, _) = app
        .post(
            "/messages/",
            &bob.token,
            json!({"recipient_username": "alice", "encrypted_content": "late"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut bob_ws = app.ws(&bob.token).await;
    bob_ws
        .send_json(json!({"recipient_username": "alice", "content": "late"}))
        .await;
    assert!(bob_ws.error().await.contains("not found"));
    assert_eq!(
        app.add_contact(&bob.token, "alice").await,
        StatusCode::NOT_FOUND
    );
    // Its name, and names like it, stay unavailable.
    for name in ["alice", "ALICE", "аlice"] {
        let (status, body) = app
            .call(
                Method::POST,
                "/users/",
                None,
                Some(json!({"username": name, "email": "new@example.com",
                            "password": "long enough pw", "public_key": "pk"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
    }
}

/// When a token expires, as its `exp` claim says.
fn expires_at(token: &str) -> std::time::SystemTime {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    std::time::UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap())
}

/// Sleeps until the wall clock passes `at`.
async fn sleep_past(at: std::time::SystemTime) {
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(500)).await;
}

/// A WebSocket ends when its token expires (after the grace), unless the
/// client renews it in-band with a newer token of the same user.
#[tokio::test]
async fn websockets_end_with_their_token_unless_renewed() {
    // A connection lasts its token's 2 s and 6 s of grace.
    let grace = Duration::from_secs(6);
    let app = spawn_with(|s| {
        s.accounts.token_ttl_secs = 2;
        s.accounts.ws_token_grace_secs = grace.as_secs();
    })
    .await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut lapsing = app.ws(&alice.token).await;
    let mut renewing = app.ws(&bob.token).await;
    assert_eq!(lapsing.text().await, "系统消息: 用户 bob 已上线。");

    // Renewal must name the same user, with a valid token.
    renewing
        .send_json(json!({"type": "auth", "token": alice.token}))
        .await;
    assert!(renewing.error().await.contains("another user"));
    renewing
        .send_json(json!({"type": "auth", "token": "not.a.token"}))
        .await;
    assert!(renewing.error().await.contains("keeps its current token"));
    // Renewed 5 s later, bob's connection lasts about 5 s longer than it
    // would have (and the newer token, used to log out below, is still valid
    // then: 2 s and the verifier's 5 s of leeway).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fresh = app.login("bob", None).await;
    renewing
        .send_json(json!({"type": "auth", "token": fresh}))
        .await;
    let renewed = renewing.json().await;
    assert_eq!(renewed["type"], "authenticated", "{renewed}");
    assert!(renewed["expires_at"].as_str().unwrap().ends_with('Z'));

    // alice never renews: closed once her token and its grace ran out.
    let (code, reason) = tokio::time::timeout(Duration::from_secs(20), lapsing.closed())
        .await
        .expect("closed once the token and its grace ran out");
    assert_eq!(code, 1008);
    assert!(reason.contains("expired"), "{reason}");
    // bob's first token and its grace are over too, and his connection lives on.
    sleep_past(expires_at(&bob.token) + grace).await;
    assert_eq!(renewing.text().await, "系统消息: 用户 alice 已下线。");
    renewing
        .send_json(json!({"recipient_username": "alice", "content": "still relaying"}))
        .await;
    assert!(renewing.json().await["status"].is_string());
    // It stands on the newer token: logging that one out closes it.
    app.post("/logout", &fresh, json!(null)).await;
    assert_eq!(renewing.closed().await, (1008, "token revoked".into()));
    eventually("bob is offline", || async {
        let token = app.login("alice", None).await;
        app.get("/me/contacts/online", &token).await.1 == json!([])
    })
    .await;
}

/// Seed clients never renew: with the default grace they keep their socket
/// well past the token's lifetime.
#[tokio::test]
async fn the_default_grace_keeps_seed_clients_connected() {
    let app = spawn_with(|s| s.accounts.token_ttl_secs = 1).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut a = app.ws(&alice.token).await;
    let mut b = app.ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.send_json(json!({"recipient_username": "alice", "content": "still here"}))
        .await;
    assert_eq!(a.json().await["content"], "still here");
}

/// A token alone cannot swap the key contacts encrypt to: the password must
/// come with it (a wrong one counts as a failed login), and key changes have
/// a budget, so that no account floods its contacts with them.
#[tokio::test]
async fn a_key_change_needs_the_password_and_has_a_budget() {
    let app = spawn_with(|s| s.rates.key_change_rate_per_user = "2/hour".parse().unwrap()).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut bob_ws = app.ws(&bob.token).await;
    let change =
        |body: serde_json::Value| app.put("/users/me/public-key", &alice.token, Some(body));
    let (status, _) = change(json!({"public_key": "a2V5MQ=="})).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the password is required"
    );
    let (status, body) = change(json!({"public_key": "a2V5MQ==", "password": "not hers"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, me) = app.get("/users/me", &alice.token).await;
    assert_eq!(me["public_key"], "pk-alice", "nothing changed");
    bob_ws.silent_for(Duration::from_millis(200)).await;
    let (status, _) =
        change(json!({"public_key": "a2V5Mg==", "password": password_of("alice")})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bob_ws.json().await["public_key"], "a2V5Mg==");
    // Two changes an hour here (the wrong password spent one).
    let (status, body) =
        change(json!({"public_key": "a2V5Mw==", "password": password_of("alice")})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    bob_ws.silent_for(Duration::from_millis(200)).await;
}
