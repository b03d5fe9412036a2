//! What operators do to a running service: rotating the token-signing key
//! across replicas, and restoring a backup.

use futures_util::StreamExt;
use reqwest::StatusCode;
use secchat::{auth::jwt::SigningKeys, config::Settings};
use serde_json::{Value, json};
use tokio::process::Command;
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

/// Backs up `backend`'s database while a server writes to it, as
/// docs/OPERATIONS.md says: `secchat backup FILE` for SQLite, `pg_dump
/// --format=custom` for Postgres (of the test's schema; an operator dumps the
/// whole database). Restores it into a fresh database and returns a backend
/// on that.
async fn backed_up_and_restored(backend: &Backend) -> Backend {
    let url = &backend.database_url;
    if url.starts_with("sqlite:") {
        let dir = tempfile::tempdir().unwrap().keep();
        let copy = dir.join("restored.db");
        let out = Command::new(env!("CARGO_BIN_EXE_secchat"))
            .args(["--database-url", url, "--log-format", "json", "backup"])
            .arg(&copy)
            .env_clear()
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("backed up"), "{log}");
        return Backend::on_database(format!("sqlite://{}", copy.display()));
    }
    // postgres://…/test?options=-c%20search_path%3Dt_…: the server, the database, the schema.
    let (base, options) = url.split_once('?').unwrap();
    let schema = options.rsplit("%3D").next().unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let dump = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("pg_dump")
        .args([
            "--format=custom",
            "--no-owner",
            "--schema",
            schema,
            "--file",
        ])
        .arg(dump.path())
        .arg(base)
        .output()
        .await
        .expect("pg_dump (Debian: postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = format!("r_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {fresh}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let out = Command::new("pg_restore")
        .args([
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            &format!("{server}/{fresh}"),
        ])
        .arg(dump.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Backend::on_database(format!("{server}/{fresh}?{options}"))
}

/// A backup taken while a server writes restores into a fresh database: a
/// server starts on it, people log in with their passwords, their contacts
/// and requests are there, and unread messages are delivered once (those
/// read before the backup not again). The copy is a consistent snapshot:
/// of messages written one after another during it, it holds a prefix.
#[tokio::test]
async fn a_backup_taken_under_writes_restores_into_a_fresh_database() {
    let backend = Backend::new().await;
    let app = backend.spawn(|_| {}).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let carol = app.user("carol").await;
    assert!(app.add_contact(&carol.token, "alice").await.is_success());
    let offline = |text: &str| json!({"recipient_username": "bob", "encrypted_content": text});
    app.post(
        "/messages/",
        &alice.token,
        offline("read before the backup"),
    )
    .await;
    assert_eq!(app.inbox(&bob.token).await, ["read before the backup"]);
    let unread = ["unread 1", "unread 2", "unread 3"];
    for text in unread {
        assert_eq!(
            app.post("/messages/", &alice.token, offline(text)).await.0,
            StatusCode::OK
        );
    }

    // Dave writes to erin, one message after another, all through the backup.
    let (dave, _erin) = app.friends("dave", "erin").await;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let (app, written) = (TestApp::at(app.addr), written.clone());
        tokio::spawn(async move {
            for i in 0.. {
                if stopped.try_recv().is_ok() {
                    break;
                }
                let body =
                    json!({"recipient_username": "erin", "encrypted_content": format!("w{i}")});
                assert_eq!(
                    app.post("/messages/", &dave.token, body).await.0,
                    StatusCode::OK
                );
                written.store(i + 1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    crate::helpers::eventually("the writer is under way", || {
        let written = written.clone();
        async move { written.load(std::sync::atomic::Ordering::SeqCst) >= 5 }
    })
    .await;
    let restored = backed_up_and_restored(&backend).await;
    stop.send(()).unwrap();
    writer.await.unwrap();
    drop(app);

    let app = restored.spawn(|_| {}).await;
    let alice = app.login("alice", None).await;
    let (_, contacts) = app.get("/me/contacts/", &alice).await;
    let names: Vec<&str> = contacts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob"], "{contacts}");
    let (_, pending) = app.get("/me/contacts/pending", &alice).await;
    assert_eq!(pending[0]["username"], "carol", "{pending}");

    let bob = app.login("bob", None).await;
    let mut ws = app.ws(&bob).await;
    for text in unread {
        assert_eq!(crate::delivery::message(&mut ws).await.2, text);
    }
    crate::delivery::quiet(&mut ws).await;
    assert!(app.inbox(&bob).await.is_empty(), "each delivered once");

    let erin = app.login("erin", None).await;
    let got = app.inbox(&erin).await;
    assert!(
        got.len() >= 5,
        "what was written before the backup began: {}",
        got.len()
    );
    let prefix: Vec<String> = (0..got.len()).map(|i| format!("w{i}")).collect();
    assert_eq!(
        got, prefix,
        "a snapshot: every message up to one point, none after a gap"
    );
}
