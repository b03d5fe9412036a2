//! Rate limits and login lock-outs, seen from outside: the request over a
//! limit gets `429` with `Retry-After` (or, on a WebSocket, an `{"error"}`
//! frame, then close 1008), the limit recovers, and other users and other
//! addresses are unaffected. Clients at other addresses come through a trusted
//! proxy's `X-Forwarded-For`.

use std::time::Duration;

use reqwest::{StatusCode, header::RETRY_AFTER};
use secchat::config::{Settings, Switch, Visibility};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, WsClient, password_of, spawn_with};

fn rate(raw: &str) -> secchat::domain::Rate {
    raw.parse().unwrap()
}

/// Every other limit out of the way, and 127.0.0.1 trusted as a proxy so that
/// a test can speak for several client addresses.
fn only(configure: impl FnOnce(&mut Settings)) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.listen.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        let plenty = rate("100000/s");
        s.rates.login_rate_per_ip = plenty;
        s.rates.register_rate_per_ip = plenty;
        s.rates.search_rate_per_user = plenty;
        s.rates.offline_rate_per_sender = plenty;
        s.rates.ws_frame_rate_per_connection = plenty;
        s.rates.ws_frame_rate_per_user = plenty;
        s.rates.inbox_rate_per_user = plenty;
        s.rates.contact_rate_per_user = plenty;
        s.rates.heartbeat_rate_per_user = plenty;
        s.rates.turn_rate_per_user = plenty;
        s.rates.key_change_rate_per_user = plenty;
        s.rates.broadcast_fanout_per_user = plenty;
        // Presence notices to everyone: tests wait for them.
        s.presence.address_visibility = Visibility::Open;
        configure(s);
    }
}

/// An answer: status, `Retry-After` in seconds, body.
type Answer = (StatusCode, Option<u64>, Value);

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    let body = response.json().await.unwrap_or(Value::Null);
    assert!(status.as_u16() < 500, "{status}: {body}");
    (status, retry_after, body)
}

async fn login_from(app: &TestApp, ip: &str, name: &str, password: &str) -> Answer {
    let response = app
        .http
        .post(app.url("/token"))
        .header("X-Forwarded-For", ip)
        .form(&[("username", name), ("password", password)])
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn register_from(app: &TestApp, ip: &str, name: &str) -> Answer {
    let response = app
        .http
        .post(app.url("/users/"))
        .header("X-Forwarded-For", ip)
        .json(&json!({
            "username": name,
            "email": format!("{name}@example.com"),
            "password": password_of(name),
            "public_key": "pk",
        }))
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn get(app: &TestApp, path: &str, token: &str) -> Answer {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> Answer {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// Asserts a refusal by a rate limit, and returns how long it asked to wait.
fn refused(answer: &Answer) -> Duration {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["detail"].is_string(), "FastAPI-shaped: {body}");
    let secs = retry_after.expect("Retry-After");
    assert!(secs >= 1, "Retry-After {secs}");
    Duration::from_secs(secs)
}

/// The server's count of refusals by `limit`.
async fn refusals(app: &TestApp, limit: &str) -> u64 {
    app.metric(&format!("secchat_rate_limited_total{{limit=\"{limit}\"}}"))
        .await as u64
}

#[tokio::test]
async fn failed_logins_lock_their_address_out_longer_each_time_and_alike_for_unknown_names() {
    let app = spawn_with(only(|s| {
        s.rates.login_free_failures = 3;
        // Long enough that a slow machine cannot let it lapse between two
        // requests the test means to be locked.
        s.rates.login_lockout_secs = 4;
        s.rates.login_lockout_max_secs = 60;
    }))
    .await;
    app.register("alice").await;
    let before = refusals(&app, "login_lockout").await;
    let ip = "198.51.100.1";
    // A name that exists and one that does not are treated alike throughout.
    let mut answers = Vec::new();
    for name in ["alice", "nobody"] {
        for _ in 0..3 {
            let (status, _, _) = login_from(&app, ip, name, "wrong").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        }
        let locked = login_from(&app, ip, name, "wrong").await;
        assert!(refused(&locked) <= Duration::from_secs(4), "{name}");
        answers.push((locked.0, locked.2));
    }
    assert_eq!(
        answers[0], answers[1],
        "no enumeration through the lock-out"
    );
    // While locked, even the right password is refused (and not checked)...
    let first = refused(&login_from(&app, ip, "alice", &password_of("alice")).await);
    // ...from this address only: the owner elsewhere logs in as ever.
    let (status, _, _) = login_from(&app, "203.0.113.9", "alice", &password_of("alice")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "nobody else's failures lock the owner out"
    );

    // After the lock, one more failure locks it again, for twice as long.
    tokio::time::sleep(first).await;
    assert_eq!(
        login_from(&app, ip, "alice", "wrong").await.0,
        StatusCode::UNAUTHORIZED
    );
    let second = refused(&login_from(&app, ip, "alice", "wrong").await);
    assert!(
        second > Duration::from_secs(4) && second <= Duration::from_secs(8),
        "doubled: {second:?}"
    );

    // A success ends the run: failures are counted from zero again.
    tokio::time::sleep(second).await;
    let (status, _, _) = login_from(&app, ip, "alice", &password_of("alice")).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let (status, _, _) = login_from(&app, ip, "alice", "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, _) = login_from(&app, ip, "alice", &password_of("alice")).await;
    assert_eq!(status, StatusCode::OK, "two failures do not lock");
    assert!(
        refusals(&app, "login_lockout").await >= before + 4,
        "counted"
    );
}

#[tokio::test]
async fn logins_are_limited_per_address_and_recover() {
    let app = spawn_with(only(|s| s.rates.login_rate_per_ip = rate("2/10s"))).await;
    app.register("alice").await;
    let before = refusals(&app, "login_per_ip").await;
    let password = password_of("alice");
    for _ in 0..2 {
        assert_eq!(
            login_from(&app, "198.51.100.1", "alice", &password).await.0,
            StatusCode::OK
        );
    }
    let wait = refused(&login_from(&app, "198.51.100.1", "alice", &password).await);
    // Another address has a budget of its own.
    assert_eq!(
        login_from(&app, "198.51.100.2", "alice", &password).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(wait).await;
    assert_eq!(
        login_from(&app, "198.51.100.1", "alice", &password).await.0,
        StatusCode::OK,
        "recovered after Retry-After"
    );
    assert!(refusals(&app, "login_per_ip").await > before, "counted");
}

#[tokio::test]
async fn registrations_are_limited_per_address_and_recover() {
    let app = spawn_with(only(|s| s.rates.register_rate_per_ip = rate("2/10s"))).await;
    let before = refusals(&app, "register_per_ip").await;
    // Invalid registrations (422) spend nothing.
    for invalid in ["sуstem", "a b", "admin"] {
        assert_eq!(
            register_from(&app, "198.51.100.1", invalid).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    for name in ["one", "two"] {
        assert_eq!(
            register_from(&app, "198.51.100.1", name).await.0,
            StatusCode::OK
        );
    }
    let wait = refused(&register_from(&app, "198.51.100.1", "three").await);
    assert_eq!(
        register_from(&app, "198.51.100.2", "four").await.0,
        StatusCode::OK,
        "another address"
    );
    // IPv6 clients are counted by their /64.
    assert_eq!(
        register_from(&app, "2001:db8:1:2::1", "five").await.0,
        StatusCode::OK
    );
    assert_eq!(
        register_from(&app, "2001:db8:1:2::2", "six").await.0,
        StatusCode::OK
    );
    refused(&register_from(&app, "2001:db8:1:2::ffff", "seven").await);
    tokio::time::sleep(wait).await;
    assert_eq!(
        register_from(&app, "198.51.100.1", "three").await.0,
        StatusCode::OK,
        "recovered, and the refused name was not taken"
    );
    assert!(
        refusals(&app, "register_per_ip").await >= before + 2,
        "counted"
    );
}

#[tokio::test]
async fn searches_are_limited_per_user_and_need_three_characters() {
    let app = spawn_with(only(|s| s.rates.search_rate_per_user = rate("2/10s"))).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let before = refusals(&app, "search_per_user").await;
    // Too short: refused before it costs anything.
    let (status, _, body) = get(&app, "/users/search/bo", &alice.token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["path", "query"]));
    for _ in 0..2 {
        let (status, _, found) = get(&app, "/users/search/bob", &alice.token).await;
        assert_eq!(
            (status, found[0]["username"].as_str()),
            (StatusCode::OK, Some("bob"))
        );
    }
    // A name that exists and one that does not: refused alike.
    let over = get(&app, "/users/search/bob", &alice.token).await;
    let wait = refused(&over);
    let other = get(&app, "/users/search/nosuchuser", &alice.token).await;
    refused(&other);
    assert_eq!((over.0, &over.2), (other.0, &other.2));
    assert_eq!(
        get(&app, "/users/search/alice", &bob.token).await.0,
        StatusCode::OK,
        "another user"
    );
    tokio::time::sleep(wait).await;
    assert_eq!(
        get(&app, "/users/search/bob", &alice.token).await.0,
        StatusCode::OK
    );
    assert!(
        refusals(&app, "search_per_user").await >= before + 2,
        "counted"
    );
}

#[tokio::test]
async fn offline_messages_are_limited_per_sender_on_both_paths() {
    let app = spawn_with(only(|s| s.rates.offline_rate_per_sender = rate("2/10s"))).await;
    let before = refusals(&app, "offline_per_sender").await;
    let alice = app.user("alice").await;
    let carol = app.user("carol").await;
    app.register("bob").await;
    let message =
        |i: i32| json!({"recipient_username": "bob", "encrypted_content": format!("m{i}")});
    for i in 0..2 {
        assert_eq!(
            post(&app, "/messages/", &alice.token, message(i)).await.0,
            StatusCode::OK
        );
    }
    let wait = refused(&post(&app, "/messages/", &alice.token, message(2)).await);
    // The WebSocket path spends the same budget, and says so.
    let mut ws = app.ws(&alice.token).await;
    ws.send_json(json!({"recipient_username": "bob", "content": "m3"}))
        .await;
    let error = ws.error().await;
    assert!(error.contains("not stored"), "{error}");
    assert_eq!(
        post(&app, "/messages/", &carol.token, message(4)).await.0,
        StatusCode::OK,
        "another sender"
    );
    tokio::time::sleep(wait).await;
    ws.send_json(json!({"recipient_username": "bob", "content": "m5"}))
        .await;
    assert!(ws.json().await["status"].is_string(), "stored");
    let bob = app.login("bob", None).await;
    assert_eq!(
        app.inbox(&bob).await,
        ["m0", "m1", "m4", "m5"],
        "refused ones not stored"
    );
    assert!(
        refusals(&app, "offline_per_sender").await >= before + 2,
        "counted on both paths"
    );
}

/// Sends `n` broadcasts on `ws`, each a different line.
async fn broadcast(ws: &mut WsClient, n: usize, tag: &str) {
    for i in 0..n {
        ws.send_text(&format!("{tag} {i}")).await;
    }
}

#[tokio::test]
async fn a_connection_over_its_frame_rate_is_told_then_closed_with_1008() {
    let app = spawn_with(only(|s| {
        s.rates.ws_frame_rate_per_connection = rate("3/hour");
        s.rates.ws_refusals_before_close = 2;
    }))
    .await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let before = refusals(&app, "ws_frames_per_connection").await;
    let mut watcher = app.ws(&carol.token).await;
    let mut fast = app.ws(&bob.token).await;
    assert_eq!(watcher.text().await, "系统消息: 用户 bob 已上线。");
    broadcast(&mut fast, 3, "ok").await;
    for i in 0..3 {
        assert_eq!(watcher.text().await, format!("bob: ok {i}"));
    }
    broadcast(&mut fast, 2, "over").await;
    for _ in 0..2 {
        let error = fast.error().await;
        assert!(error.contains("too many"), "{error}");
    }
    // Another connection of the same user has a budget of its own.
    let mut second = app.ws(&bob.token).await;
    second.send_text("from the second").await;
    assert_eq!(watcher.text().await, "bob: from the second");
    // Going on after being told: closed as a policy violation.
    fast.send_text("still").await;
    assert_eq!(fast.closed().await, (1008, "rate limit exceeded".into()));
    watcher.silent_for(Duration::from_millis(300)).await;
    assert!(
        refusals(&app, "ws_frames_per_connection").await >= before + 3,
        "counted"
    );
}

#[tokio::test]
async fn a_users_connections_share_one_frame_budget() {
    let app = spawn_with(only(|s| s.rates.ws_frame_rate_per_user = rate("3/hour"))).await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let before = refusals(&app, "ws_frames_per_user").await;
    let mut watcher = app.ws(&carol.token).await;
    let mut one = app.ws(&bob.token).await;
    let mut two = app.ws(&bob.token).await;
    assert_eq!(watcher.text().await, "系统消息: 用户 bob 已上线。");
    broadcast(&mut one, 2, "one").await;
    broadcast(&mut two, 1, "two").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(watcher.text().await);
    }
    seen.sort();
    assert_eq!(seen, ["bob: one 0", "bob: one 1", "bob: two 0"]);
    // Directed frames count too; the refusal names the message, if it has a
    // name, as every error answering such a frame does.
    two.send_json(json!({"recipient_username": "carol", "content": "x", "client_id": "c1"}))
        .await;
    let refusal = two.json().await;
    assert!(
        refusal["error"].as_str().unwrap().contains("too many"),
        "{refusal}"
    );
    assert_eq!(refusal["client_id"], "c1", "{refusal}");
    // A name the server would not take is not repeated back.
    two.send_json(
        json!({"recipient_username": "carol", "content": "x", "client_id": "n".repeat(65)}),
    )
    .await;
    let refusal = two.json().await;
    assert!(refusal["error"].is_string(), "{refusal}");
    assert!(refusal.get("client_id").is_none(), "{refusal}");
    watcher.silent_for(Duration::from_millis(300)).await;
    // Carol's budget is her own.
    watcher.send_text("carol here").await;
    assert_eq!(
        one.text_but_notices_of(&["carol"]).await,
        "carol: carol here"
    );
    assert!(
        refusals(&app, "ws_frames_per_user").await > before,
        "counted"
    );
}

#[tokio::test]
async fn rate_limits_off_lets_one_address_do_as_much_as_it_likes() {
    let app = spawn_with(|s| {
        s.rates.rate_limits = Switch::Off;
        let one = rate("1/hour");
        s.rates.login_rate_per_ip = one;
        s.rates.register_rate_per_ip = one;
        s.rates.search_rate_per_user = one;
        s.rates.login_free_failures = 1;
    })
    .await;
    let alice = app.user("alice").await;
    app.register("bob").await;
    for _ in 0..5 {
        assert_eq!(
            login_from(&app, "127.0.0.1", "bob", "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&app, "/users/search/bob", &alice.token).await.0,
            StatusCode::OK
        );
    }
    assert!(!app.login("bob", None).await.is_empty());
}

fn cluster_limits(s: &mut Settings) {
    only(|s| {
        s.rates.login_rate_per_ip = rate("3/hour");
        s.rates.login_free_failures = 2;
        s.rates.login_lockout_secs = 60;
        s.rates.ws_frame_rate_per_user = rate("3/hour");
    })(s)
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn replicas_share_one_budget_and_one_lock_out() {
    let backend = Backend::cluster().await;
    let a = backend.spawn(cluster_limits).await;
    let b = backend.spawn(cluster_limits).await;
    a.register("alice").await;
    // Two failures from one address, one through each replica, lock that
    // address out of the account on both.
    for app in [&a, &b] {
        assert_eq!(
            login_from(app, "198.51.100.1", "alice", "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, _, body) = login_from(&a, "198.51.100.1", "alice", &password_of("alice")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "locked, {body}");
    // .1 spent its three attempts (3 an hour) above: refused on either replica.
    refused(&login_from(&b, "198.51.100.1", "nobody", "wrong").await);
    refused(&login_from(&a, "198.51.100.1", "nobody", "wrong").await);
    // Another address is not locked out.
    let (status, _, _) = login_from(&b, "198.51.100.2", "alice", &password_of("alice")).await;
    assert_eq!(status, StatusCode::OK);

    // Frames: one budget for a user's connections on every replica.
    let bob = a.user("bob").await;
    let carol = a.user("carol").await;
    let mut watcher = a.ws(&carol.token).await;
    let mut on_a = a.ws(&bob.token).await;
    let mut on_b = b.ws(&bob.token).await;
    assert_eq!(watcher.text().await, "系统消息: 用户 bob 已上线。");
    broadcast(&mut on_a, 2, "a").await;
    broadcast(&mut on_b, 1, "b").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(watcher.text().await);
    }
    seen.sort();
    assert_eq!(seen, ["bob: a 0", "bob: a 1", "bob: b 0"]);
    on_b.send_text("over").await;
    assert!(on_b.error().await.contains("too many"));
    on_a.send_text("over").await;
    assert!(on_a.error().await.contains("too many"));
    watcher.silent_for(Duration::from_millis(300)).await;
}

/// Friend requests (with acceptances and removals), heartbeats and TURN
/// credentials each have a budget per user, so that no account can spin the
/// store, presence or a TURN server's credentials for free.
#[tokio::test]
async fn contact_changes_heartbeats_and_turn_credentials_are_limited_per_user() {
    let app = spawn_with(only(|s| {
        s.rates.contact_rate_per_user = "3/hour".parse().unwrap();
        s.rates.heartbeat_rate_per_user = "2/hour".parse().unwrap();
        s.rates.turn_rate_per_user = "2/hour".parse().unwrap();
        s.turn.turn_secret = Some("turn-secret".to_owned().into());
    }))
    .await;
    let alice = app.user("alice").await;
    for name in ["bob", "carol", "dave", "erin"] {
        app.user(name).await;
    }
    let before = refusals(&app, "contacts_per_user").await;
    for name in ["bob", "carol", "dave"] {
        assert_eq!(
            app.add_contact(&alice.token, name).await,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        app.add_contact(&alice.token, "erin").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (status, _) = app.delete("/me/contacts/2", &alice.token).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "removals share the budget"
    );
    assert!(refusals(&app, "contacts_per_user").await >= before + 2);

    let beat = || {
        app.put(
            "/me/connection-info",
            &alice.token,
            Some(json!({"port": 6000})),
        )
    };
    assert_eq!(beat().await.0, StatusCode::OK);
    assert_eq!(beat().await.0, StatusCode::OK);
    assert_eq!(beat().await.0, StatusCode::TOO_MANY_REQUESTS);

    let turn = || app.get("/me/turn-credentials", &alice.token);
    assert_eq!(turn().await.0, StatusCode::OK);
    assert_eq!(turn().await.0, StatusCode::OK);
    assert_eq!(turn().await.0, StatusCode::TOO_MANY_REQUESTS);
}

/// A broadcast's fan-out counts against its sender: a unit per listener for
/// every KiB, so that one account within its frame rate cannot flood every
/// connected user with large lines.
#[tokio::test]
async fn broadcast_fan_out_is_counted_against_the_sender() {
    let app = spawn_with(only(|s| {
        s.rates.broadcast_fanout_per_user = rate("40/hour")
    }))
    .await;
    let alice = app.user("alice").await;
    let mut listeners = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let user = app.user(name).await;
        listeners.push(app.ws(&user.token).await);
    }
    let mut a = app.ws(&alice.token).await;
    let before = refusals(&app, "broadcast_per_user").await;
    // Three listeners: 10 KiB costs 30, then 1 KiB costs 3; 3 KiB (9) is too much.
    let (big, small, refused_line) = ("b".repeat(10 * 1024), "s".repeat(1000), "r".repeat(3000));
    for line in [&big, &small] {
        a.send_text(line).await;
        for listener in &mut listeners {
            loop {
                let text = listener.text().await;
                if !text.starts_with("系统消息") {
                    assert_eq!(text, format!("alice: {line}"));
                    break;
                }
            }
        }
    }
    a.send_text(&refused_line).await;
    loop {
        let text = a.text().await;
        if !text.starts_with("系统消息") {
            assert!(text.contains("Too many broadcasts"), "{text}");
            break;
        }
    }
    for listener in &mut listeners {
        listener.silent_for(Duration::from_millis(200)).await;
    }
    assert!(refusals(&app, "broadcast_per_user").await > before);
}
