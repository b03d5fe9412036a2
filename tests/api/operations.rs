//! What operators do to a running service: rotating the token-signing key
//! across replicas, and restoring a backup.

use futures_util::StreamExt;
use reqwest::StatusCode;
use secchat::{
    auth::jwt::SigningKeys,
    config::{Settings, Switch},
};
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
        // The copy goes where a fresh embedded backend keeps its database.
        let restored = Backend::embedded();
        let copy = restored.database_url.trim_start_matches("sqlite://");
        let out = succeeded(
            Command::new(env!("CARGO_BIN_EXE_secchat"))
                .args([
                    "--database-url",
                    url,
                    "--log-format",
                    "json",
                    "backup",
                    copy,
                ])
                .env_clear(),
        )
        .await;
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("backed up"), "{log}");
        return restored;
    }
    // postgres://…/test?options=-c%20search_path%3Dt_…: the server, the database, the schema.
    let (base, options) = url.split_once('?').unwrap();
    let schema = options.rsplit("%3D").next().unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let dump = tempfile::NamedTempFile::new().unwrap();
    succeeded(
        Command::new("pg_dump")
            .args([
                "--format=custom",
                "--no-owner",
                "--schema",
                schema,
                "--file",
            ])
            .arg(dump.path())
            .arg(base),
    )
    .await;
    let fresh = format!("r_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {fresh}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let target = format!("{server}/{fresh}");
    succeeded(
        Command::new("pg_restore")
            .args(["--no-owner", "--exit-on-error", "--dbname", &target])
            .arg(dump.path()),
    )
    .await;
    Backend::on_database(format!("{server}/{fresh}?{options}"))
}

/// Runs `command` to its end; it must succeed.
async fn succeeded(command: &mut Command) -> std::process::Output {
    let out = command.output().await.expect("the command runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?} failed: {stderr}");
    out
}

/// A backup taken while a server writes restores into a fresh database: a
/// server starts on it, people log in with their passwords, their contacts
/// and requests are there, and unread messages are delivered once (those
/// read before the backup not again). The copy is a consistent snapshot:
/// of messages written one after another during it, it holds a prefix.
#[tokio::test]
async fn a_backup_taken_under_writes_restores_into_a_fresh_database() {
    let backend = Backend::new().await;
    // The writer below posts for as long as the backup takes (seconds on a
    // busy machine): no sender budget or mailbox quota may stop it first.
    let app = backend
        .spawn(|s| {
            s.rates.rate_limits = Switch::Off;
            s.delivery.mailbox_max_messages = 1_000_000;
        })
        .await;
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

/// Each exported metric's name and the label names its series carry.
type Exported = std::collections::HashMap<String, std::collections::HashSet<String>>;

fn exported(metrics: &str) -> Exported {
    let mut names = Exported::new();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = names.entry(line[..end].to_owned()).or_default();
        if let Some(inner) = line[end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
        {
            for pair in inner.0.split(',').filter(|p| !p.is_empty()) {
                labels.insert(pair.split_once('=').unwrap().0.to_owned());
            }
        }
    }
    names
}

/// What in `query` (PromQL, or any text holding it) names a secchat metric
/// or label that `exported` lacks: metric names, the labels of their
/// selectors, and the labels of `by (…)` over them. Target labels
/// (`instance`, `job`) are Prometheus's, `le` a histogram's buckets'.
fn unknown_references(query: &str, exported: &Exported) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut unknown = Vec::new();
    let has_label = |metric: &str, label: &str| {
        matches!(label, "instance" | "job")
            || (label == "le" && metric.ends_with("_bucket"))
            || exported
                .get(metric)
                .is_some_and(|labels| labels.contains(label))
    };
    let metrics_in = |text: &str| -> Vec<(usize, String)> {
        let mut found = Vec::new();
        let mut at = 0;
        while let Some(start) = text[at..].find("secchat_").map(|i| at + i) {
            let end = text[start..]
                .find(|c| !is_ident(c))
                .map_or(text.len(), |i| start + i);
            if start == 0 || !text[..start].ends_with(is_ident) {
                found.push((end, text[start..end].to_owned()));
            }
            at = end;
        }
        found
    };
    for (end, metric) in metrics_in(query) {
        if !exported.contains_key(&metric) {
            unknown.push(format!("metric {metric}"));
            continue;
        }
        if let Some(selector) = query[end..].trim_start().strip_prefix('{') {
            let selector = &selector[..selector.find('}').unwrap()];
            for matcher in selector.split(',') {
                let label = matcher.split(['=', '!']).next().unwrap().trim();
                if !has_label(&metric, label) {
                    unknown.push(format!("label {label} of {metric}"));
                }
            }
        }
    }
    let mut at = 0;
    while let Some(by) = query[at..].find("by (").map(|i| at + i) {
        let close = by + query[by..].find(')').unwrap();
        let labels: Vec<&str> = query[by + 4..close].split(',').map(str::trim).collect();
        // The aggregation's argument: from the next '(' to its match.
        let open = close + 1 + query[close + 1..].find('(').unwrap();
        let mut depth = 0;
        let end = open
            + query[open..]
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .unwrap()
                .0;
        for (_, metric) in metrics_in(&query[open..end]) {
            for label in &labels {
                if exported.contains_key(&metric) && !has_label(&metric, label) {
                    unknown.push(format!("label {label} of {metric} (by)"));
                }
            }
        }
        at = close;
    }
    unknown
}

/// The Grafana dashboard's queries and the alert rules name only metrics and
/// labels a running server exports: a renamed metric or label fails here,
/// not on an operator's screen at night.
#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_what_the_server_exports() {
    let app = crate::helpers::spawn().await;
    // Traffic that brings the series with labels from requests into being.
    let (alice, _bob) = app.friends("dash-alice", "dash-bob").await;
    app.get("/me/contacts/online", &alice.token).await;
    let exported = exported(&app.text("/metrics").await);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/dashboards/secchat.json")).unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| variable["query"]["query"].as_str().unwrap().to_owned())
        .collect();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(queries.len() > 30, "the dashboard's queries were found");
    // The rules file as text: its exprs, and annotations that name nothing else.
    queries.push(std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap());
    for query in &queries {
        let unknown = unknown_references(query, &exported);
        assert!(
            unknown.is_empty(),
            "{query}\nnames what the server does not export: {unknown:?}"
        );
    }

    // The check itself finds what it is there to find.
    for (bad, why) in [
        (
            "rate(secchat_logins_total_renamed[5m])",
            "metric secchat_logins_total_renamed",
        ),
        (
            r#"secchat_logins_total{outcome="failure"}"#,
            "label outcome of secchat_logins_total",
        ),
        (
            "sum by (instance, reason) (rate(secchat_logins_total[5m]))",
            "label reason of secchat_logins_total (by)",
        ),
    ] {
        assert_eq!(unknown_references(bad, &exported), [why]);
    }
}

/// `secchat backup` never overwrites a file (not even its own earlier copy)
/// and leaves it as it was; with Postgres it names the tool that does it.
#[tokio::test]
async fn the_backup_command_never_overwrites_and_sends_postgres_to_pg_dump() {
    let backend = Backend::embedded();
    let url = backend.database_url.clone();
    let live = std::path::PathBuf::from(url.trim_start_matches("sqlite://"));
    let app = backend.spawn(|_| {}).await;
    app.user("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let backup = |url: &str, to: &std::path::Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_secchat"));
        command
            .args(["--database-url", url, "backup"])
            .arg(to)
            .env_clear();
        command
    };
    let copy = dir.path().join("copy.db");
    succeeded(&mut backup(&url, &copy)).await;
    let first = std::fs::read(&copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the copy holds password hashes: the owner's alone"
    );
    for to in [&copy, &live] {
        let out = backup(&url, to).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("exists already"),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read(&copy).unwrap(), first, "left as it was");
    let out = backup(
        "postgres://secchat@127.0.0.1:1/secchat",
        &dir.path().join("pg.db"),
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("pg_dump"),
        "{stderr}"
    );
    assert!(!dir.path().join("pg.db").exists());
}
