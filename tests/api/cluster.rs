//! Several replicas sharing one Postgres and one Redis. These need both servers
//! (`TEST_DATABASE_URL`, `TEST_REDIS_URL`), so they are ignored by a plain
//! `cargo test`; CI runs them with `--include-ignored`.

use std::{collections::HashSet, process::Stdio, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::process::{Child, Command};

use secchat::config::{Settings, Visibility};

use crate::{
    delivery::{direct, frame, message, quiet},
    failover::ready_again,
    helpers::{Backend, TestApp, eventually, free_port},
};

/// `n` replicas started at once, so their migrations race (an advisory lock
/// serialises them).
async fn replicas(backend: &Backend, n: usize, configure: fn(&mut Settings)) -> Vec<TestApp> {
    futures_util::future::join_all((0..n).map(|_| backend.spawn(configure))).await
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn messages_and_presence_cross_replicas() {
    let backend = Backend::cluster().await;
    // Notices to everyone, as the seed's server sent them.
    let r = replicas(&backend, 3, |s| {
        s.presence.address_visibility = Visibility::Open
    })
    .await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let carol = r[0].user("carol").await;
    // Presence set through one replica is visible through the others.
    r[1].login("bob", Some(7777)).await;
    for app in &r {
        let (status, info) = app.get("/users/bob/connection-info", &alice.token).await;
        assert_eq!(
            (status, info["port"].as_u64()),
            (StatusCode::OK, Some(7777))
        );
    }

    let mut a = r[0].ws(&alice.token).await;
    let mut b = r[1].ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    let mut c = r[2].ws(&carol.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 carol 已上线。");
    // Alice's notice, published before bob connected, may reach replica 1
    // after he did (a busy replica reads its subscription late).
    assert_eq!(
        b.text_but_notices_of(&["alice"]).await,
        "系统消息: 用户 carol 已上线。"
    );

    // A directed message crosses from replica 0 to replica 1.
    a.send_json(json!({"recipient_username": "bob", "content": "across"}))
        .await;
    let frame = b.json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["content"].as_str()),
        (Some("p2p_message"), Some("across"))
    );
    // A broadcast reaches both other replicas.
    c.send_text("hello all").await;
    assert_eq!(a.text().await, "carol: hello all");
    assert_eq!(b.text().await, "carol: hello all");
    // So may alice's and bob's reach carol.
    c.silent_but_notices_of(&["alice", "bob"], Duration::from_millis(200))
        .await;
    // Logout through replica 2 is honoured by replica 0 and closes bob's socket on 1.
    r[2].post("/logout", &bob.token, json!(null)).await;
    assert_eq!(
        r[0].get("/users/me", &bob.token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(b.closed().await.0, 1008);
    assert_eq!(a.text().await, "系统消息: 用户 bob 已下线。");
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn two_devices_on_two_replicas_both_receive() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 3, |_| {}).await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let mut phone = r[1].ws(&bob.token).await;
    let mut laptop = r[2].ws(&bob.token).await;
    let mut a = r[0].ws(&alice.token).await;
    phone.text().await; // alice's notice
    laptop.text().await;
    a.send_json(json!({"recipient_username": "bob", "content": "to both"}))
        .await;
    assert_eq!(phone.json().await["content"], "to both");
    assert_eq!(laptop.json().await["content"], "to both");
    // Closing one device: bob stays online, no notice.
    drop(phone);
    a.silent_for(Duration::from_millis(300)).await;
    drop(laptop);
    assert_eq!(a.text().await, "系统消息: 用户 bob 已下线。");
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn offline_messages_are_fetched_exactly_once_across_replicas() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 3, |s| {
        s.rates.offline_rate_per_sender = "1000/min".parse().unwrap();
    })
    .await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let sends = (0..300).map(|i| {
        r[i % 3].post(
            "/messages/",
            &alice.token,
            json!({"recipient_username": "bob", "encrypted_content": format!("m{i}")}),
        )
    });
    for (status, _) in futures_util::future::join_all(sends).await {
        assert_eq!(status, StatusCode::OK);
    }
    let fetches = (0..12).map(|i| r[i % 3].call(Method::GET, "/messages/", Some(&bob.token), None));
    let mut seen = HashSet::new();
    let mut total = 0;
    for (_, batch) in futures_util::future::join_all(fetches).await {
        for m in batch.as_array().unwrap() {
            total += 1;
            seen.insert(m["id"].as_i64().unwrap());
        }
    }
    assert_eq!((total, seen.len()), (300, 300));
}

/// A replica as its own process, so that it can be killed.
struct Process {
    child: Child,
    addr: String,
}

impl Process {
    async fn start(backend: &Backend, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_secchat"))
            .args(backend.args())
            .args(["--bind", &addr])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the server binary starts");
        let http = reqwest::Client::new();
        let ready = format!("http://{addr}/readyz");
        eventually("the replica is ready", || {
            let (http, ready) = (&http, &ready);
            async move {
                http.get(ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        })
        .await;
        Self { child, addr }
    }

    async fn ws(&self, token: &str) -> crate::helpers::WsClient {
        let url = format!("ws://{}/ws?token={token}", self.addr);
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        crate::helpers::WsClient { stream }
    }

    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn a_killed_replica_leaves_no_one_online_and_loses_nothing() {
    let backend = Backend::cluster().await;
    let lease = ["--presence-lease-secs", "2"];
    let survivor = backend.spawn(|s| s.presence.presence_lease_secs = 2).await;
    let doomed = Process::start(&backend, &lease).await;
    let (alice, bob) = survivor.friends("alice", "bob").await;
    let mut a = survivor.ws(&alice.token).await;
    let _b = doomed.ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    // While bob is connected, messages to him cross to the doomed replica.
    a.send_json(json!({"recipient_username": "bob", "content": "before"}))
        .await;
    a.silent_for(Duration::from_millis(200)).await;

    let mut doomed = doomed;
    doomed.signal("-KILL").await;
    let _ = doomed.child.wait().await;
    // Within one lease (plus renewal slack) bob is offline everywhere...
    eventually("bob offline", || async {
        survivor
            .get("/users/bob/connection-info", &alice.token)
            .await
            .0
            == StatusCode::NOT_FOUND
    })
    .await;
    // ...and messages to him are stored, not lost.
    a.send_json(json!({"recipient_username": "bob", "content": "after"}))
        .await;
    assert_eq!(a.json().await["status"], "用户 bob 当前离线，消息已保存。");
    let (_, inbox) = survivor.get("/messages/", &bob.token).await;
    assert_eq!(inbox.as_array().unwrap().len(), 1);
    assert_eq!(inbox[0]["encrypted_content"], "after");
    // The count of bob's connections on the dead replica no longer counts: a new
    // connection is his first again.
    let _b = survivor.ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn a_terminated_replica_closes_its_sockets_with_1001_and_exits() {
    let backend = Backend::cluster().await;
    let other = backend.spawn(|_| {}).await;
    let mut leaving = Process::start(&backend, &[]).await;
    let (alice, bob) = other.friends("alice", "bob").await;
    let mut a = other.ws(&alice.token).await;
    let mut b = leaving.ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    leaving.signal("-TERM").await;
    assert_eq!(b.closed().await.0, 1001);
    // It cleared its connections' presence on the way out.
    assert_eq!(a.text().await, "系统消息: 用户 bob 已下线。");
    let status = tokio::time::timeout(Duration::from_secs(15), leaving.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exited with {status}");
}

/// A Redis of the test's own, so that it can be restarted.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server installed");
        let url = format!("redis://127.0.0.1:{port}");
        eventually("private Redis answers", || {
            let url = url.clone();
            async move {
                match redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                {
                    Ok(mut c) => redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        Self { port, child }
    }
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn fan_out_resumes_after_redis_restarts() {
    let mut redis = PrivateRedis::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let backend = Backend::cluster_on_redis(&url).await;
    let r = replicas(&backend, 2, |s| s.presence.presence_lease_secs = 3).await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let mut a = r[0].ws(&alice.token).await;
    let mut b = r[1].ws(&bob.token).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");

    redis.child.kill().await.unwrap();
    eventually(
        "replicas notice the fan-out subscription is broken",
        || async {
            let response = r[1].http.get(r[1].url("/readyz")).send().await.unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            status == StatusCode::SERVICE_UNAVAILABLE && body["bus"] == false
        },
    )
    .await;
    // Requests that need Redis fail fast and clearly.
    let response = r[0]
        .http
        .get(r[0].url("/me/contacts/online"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Logins cannot be counted, so they are refused rather than let through
    // unlimited; a directed message is still kept offline (fan-out is down,
    // and its limits let it pass).
    let login = r[0]
        .http
        .post(r[0].url("/token"))
        .form(&[("username", "alice"), ("password", "whatever")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(login.headers().contains_key("retry-after"));
    a.send_json(json!({"recipient_username": "bob", "content": "while Redis is away"}))
        .await;
    let stored = a.json().await;
    assert!(stored["status"].is_string(), "stored: {stored}");
    // With a client id, `sent` comes once the message is stored.
    a.send_json(direct("bob", "also while away", Some("away-1")))
        .await;
    assert!(a.json().await["status"].is_string());
    let sent = a.json().await;
    assert_eq!(
        (&sent["type"], &sent["client_id"]),
        (&json!("sent"), &json!("away-1"))
    );

    let _redis = PrivateRedis::start(redis.port).await;
    for app in &r {
        ready_again(app).await;
    }
    // What was sent while Redis was away reaches bob's open socket once the
    // replica receives again, before anything sent later.
    for content in ["while Redis is away", "also while away"] {
        let m = b.json().await;
        assert_eq!(
            (&m["type"], &m["content"]),
            (&json!("offline_message"), &json!(content))
        );
    }
    // Without restarting replicas: directed messages and broadcasts flow again,
    // and presence held by open sockets is restored.
    a.send_json(json!({"recipient_username": "bob", "content": "after restart"}))
        .await;
    assert_eq!(b.json().await["content"], "after restart");
    b.send_text("me too").await;
    assert_eq!(a.text().await, "bob: me too");
    eventually("bob online again", || async {
        r[0].get("/users/bob/connection-info", &alice.token).await.0 == StatusCode::OK
    })
    .await;
    // None twice.
    assert!(r[1].inbox(&bob.token).await.is_empty());
    assert!(r[0].inbox(&bob.token).await.is_empty());
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn every_replica_answers_the_online_panel_as_of_the_latest_change() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 2, |_| {}).await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let online = |app: &TestApp| {
        let token = alice.token.clone();
        let app = app
            .http
            .get(app.url("/me/contacts/online"))
            .bearer_auth(token);
        async move {
            let body: serde_json::Value = app.send().await.unwrap().json().await.unwrap();
            body.as_array().unwrap().clone()
        }
    };
    // Both replicas have read alice's list.
    for app in &r {
        assert_eq!(online(app).await.len(), 1);
    }
    // Bob removes her through replica 1; replica 0 knows at once.
    let path = format!("/me/contacts/{}", alice.id);
    let (status, _) = r[1].delete(&path, &bob.token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(online(&r[0]).await.is_empty());
    // Befriended again through replica 0; replica 1 knows at once.
    r[0].post(
        "/me/contacts/",
        &bob.token,
        json!({"friend_username": "alice"}),
    )
    .await;
    let path = format!("/me/contacts/{}", bob.id);
    let (status, _) = r[0].put(&path, &alice.token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(online(&r[1]).await[0]["username"], "bob");
    // A heartbeat through one replica moves bob on the other.
    r[1].put(
        "/me/connection-info",
        &bob.token,
        Some(json!({"port": 5151})),
    )
    .await;
    assert_eq!(online(&r[0]).await[0]["port"], 5151);
}

/// The account controls act on every replica: a password change through one
/// closes the sessions held on another and refuses their tokens everywhere; a
/// new key reaches a contact connected elsewhere; logging out everywhere and
/// deleting the account do the same.
#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn account_controls_reach_every_replica() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 3, |_| {}).await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let laptop = r[1].login("alice", None).await;
    let mut laptop_ws = r[1].ws(&laptop).await;
    let mut phone_ws = r[2].ws(&alice.token).await;
    let mut bob_ws = r[2].ws(&bob.token).await;

    let (status, _) = r[0]
        .put(
            "/users/me/password",
            &alice.token,
            Some(json!({"old_password": crate::helpers::password_of("alice"), "new_password": "n3w-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(laptop_ws.closed().await.0, 1008);
    for app in &r {
        assert_eq!(
            app.get("/users/me", &laptop).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(app.get("/users/me", &alice.token).await.0, StatusCode::OK);
    }

    let (status, _) = r[1]
        .put(
            "/users/me/public-key",
            &alice.token,
            Some(json!({"public_key": "a2V5Mg==", "password": "n3w-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let frame = bob_ws.json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["public_key"].as_str()),
        (Some("key_changed"), Some("a2V5Mg=="))
    );
    let (_, panel) = r[0].get("/me/contacts/", &bob.token).await;
    assert_eq!(panel[0]["public_key"], "a2V5Mg==");

    let (status, _) = r[1].post("/logout/all", &alice.token, json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(phone_ws.closed().await.0, 1008);
    for app in &r {
        assert_eq!(
            app.get("/users/me", &alice.token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    let token = r[2]
        .http
        .post(r[2].url("/token"))
        .form(&[("username", "alice"), ("password", "n3w-password")])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut last_ws = r[0].ws(&token).await;
    let deleted = r[1]
        .http
        .delete(r[1].url("/users/me"))
        .bearer_auth(&token)
        .json(&json!({"password": "n3w-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(last_ws.closed().await.0, 1008);
    for app in &r {
        assert_eq!(app.get("/me/contacts/", &bob.token).await.1, json!([]));
    }
}

/// A client fetching with `ack=manual` that crashes before acknowledging gets
/// the same messages again through any replica; the acknowledgement through a
/// third holds everywhere.
#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn manual_acknowledgement_holds_across_replicas() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 3, |_| {}).await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    for (i, app) in r.iter().enumerate() {
        app.post(
            "/messages/",
            &alice.token,
            json!({"recipient_username": "bob", "encrypted_content": format!("m{i}")}),
        )
        .await;
    }
    let (_, first) = r[0].get("/messages/?ack=manual", &bob.token).await;
    let (_, again) = r[1].get("/messages/?ack=manual", &bob.token).await;
    assert_eq!(first.as_array().unwrap().len(), 3);
    assert_eq!(first, again);
    let ids: Vec<i64> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    let (_, acked) = r[2]
        .post("/messages/ack", &bob.token, json!({"ids": ids}))
        .await;
    assert_eq!(acked, json!({"acked": 3}));
    for app in &r {
        assert_eq!(
            app.get("/messages/?ack=manual", &bob.token).await.1,
            json!([])
        );
    }
}

/// Receipts and redelivery cross replicas: `sent` where the sender is,
/// `delivered` on every replica that holds a connection of the sender's that
/// takes receipts, a duplicate client id from another replica not delivered,
/// and what a connection left unacknowledged delivered again, in order, on
/// another replica.
#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn receipts_and_redelivery_reach_across_replicas() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 3, |_| {}).await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let mut a = r[0].ws(&alice.token).await;
    let mut a2 = r[2].ws_manual(&alice.token).await;
    let mut b = r[1].ws_manual(&bob.token).await;
    a.send_json(direct("bob", "x1", Some("x1"))).await;
    let sent = frame(&mut a).await;
    assert_eq!(sent["type"], "sent");
    let id = sent["id"].as_i64().unwrap();
    assert_eq!(
        message(&mut b).await,
        ("p2p_message".into(), Some(id), "x1".into())
    );
    // The same client id from alice's other device, on another replica.
    a2.send_json(direct("bob", "x1", Some("x1"))).await;
    assert_eq!(frame(&mut a2).await, sent);
    quiet(&mut b).await;
    b.ack(&[id]).await;
    let delivered = json!({"type": "delivered", "id": id});
    assert_eq!(frame(&mut a).await, delivered);
    assert_eq!(frame(&mut a2).await, delivered);

    let mut ids = Vec::new();
    for content in ["x2", "x3"] {
        a.send_json(direct("bob", content, Some(content))).await;
        ids.push(frame(&mut a).await["id"].as_i64().unwrap());
        assert_eq!(message(&mut b).await.2, content);
    }
    b.leave().await;
    let mut b = r[2].ws_manual(&bob.token).await;
    for (id, content) in ids.iter().zip(["x2", "x3"]) {
        assert_eq!(
            message(&mut b).await,
            ("offline_message".into(), Some(*id), content.into())
        );
    }
    b.ack(&ids).await;
    for id in &ids {
        assert_eq!(frame(&mut a).await, json!({"type": "delivered", "id": id}));
    }
    for app in &r {
        assert_eq!(
            app.get("/messages/?ack=manual", &bob.token).await.1,
            json!([])
        );
    }
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn contact_events_and_ephemeral_frames_cross_replicas() {
    let backend = Backend::cluster().await;
    let r = replicas(&backend, 2, |_| {}).await;
    let (alice, bob) = (r[0].user("alice").await, r[0].user("bob").await);
    let mut b = r[1].ws(&bob.token).await;
    let mut a = r[0].ws(&alice.token).await;
    assert_eq!(
        r[0].add_contact(&alice.token, "bob").await,
        StatusCode::ACCEPTED
    );
    let request = b.json().await;
    assert_eq!(
        (request["type"].as_str(), request["user"]["id"].as_i64()),
        (Some("contact_request"), Some(alice.id))
    );
    let path = format!("/me/contacts/{}", alice.id);
    assert_eq!(r[1].put(&path, &bob.token, None).await.0, StatusCode::OK);
    let accepted = a.json().await;
    assert_eq!(
        (
            accepted["type"].as_str(),
            accepted["user"]["username"].as_str()
        ),
        (Some("contact_accepted"), Some("bob"))
    );
    // Mutual now: an ephemeral frame crosses too, and is kept nowhere.
    a.send_json(json!({"recipient_username": "bob", "content": "typing", "ephemeral": true}))
        .await;
    let typing = b.json().await;
    assert_eq!(
        (typing["content"].as_str(), typing["ephemeral"].as_bool()),
        (Some("typing"), Some(true))
    );
    assert_eq!(r[0].get("/messages/", &bob.token).await.1, json!([]));
}
