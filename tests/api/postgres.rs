//! Postgres in front of real operators (issue "Scale out for real"): the
//! store through PgBouncer in transaction mode, and a Postgres outage under
//! traffic. Both need Postgres and Redis, so they are ignored by a plain
//! `cargo test`; CI runs them with `--include-ignored`.

use std::{process::Stdio, time::Duration};

use reqwest::StatusCode;
use secchat::config::{Pooler, Switch};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    failover::{exactly_once_through, reports_outage, within_failover},
    helpers::{Backend, TestApp, TestUser, test_database_url},
};

/// `TEST_DATABASE_URL` without its database: the server.
fn test_server() -> String {
    let url = test_database_url();
    let (server, _) = url.rsplit_once('/').expect("a postgres:// URL");
    server.to_owned()
}

#[tokio::test]
#[ignore = "needs Postgres, PgBouncer and Redis: run with --include-ignored (CI does)"]
async fn the_store_works_through_pgbouncer_in_transaction_mode() {
    let pgbouncer = std::env::var("TEST_PGBOUNCER_URL").expect(
        "TEST_PGBOUNCER_URL: a PgBouncer in transaction mode in front of TEST_DATABASE_URL's \
         server (deploy/pgbouncer.sh start prints one)",
    );
    let backend = Backend::own_database(&test_server(), pgbouncer.trim_end_matches('/')).await;
    // Two replicas of many connections each, on PgBouncer's few server
    // connections (deploy/pgbouncer.sh: 4 per database): every server
    // connection serves both replicas' clients in turn.
    let r: Vec<TestApp> = futures_util::future::join_all((0..2).map(|_| {
        backend.spawn(|s| {
            s.storage.database_pooler = Pooler::Transaction;
            s.storage.database_pool_size = 12;
            // Everyone registers from one address, at once.
            s.rates.rate_limits = Switch::Off;
        })
    }))
    .await;
    const USERS: usize = 12;
    const MESSAGES: usize = 15;
    let name = |i: usize| format!("pooled{i}");
    // Everyone registers and logs in at once, alternating replicas.
    let users: Vec<TestUser> = futures_util::future::join_all((0..USERS).map(|i| {
        let r = &r;
        async move { r[i % 2].user(&name(i)).await }
    }))
    .await;
    // Each asks the next on one replica; the next accepts on the other.
    futures_util::future::join_all((0..USERS).map(|i| {
        let (me, next) = (&users[i], &users[(i + 1) % USERS]);
        let r = &r;
        async move {
            assert_eq!(
                r[i % 2].add_contact(&me.token, &next.name).await,
                StatusCode::ACCEPTED
            );
            let (status, body) = r[(i + 1) % 2]
                .put(&format!("/me/contacts/{}", me.id), &next.token, None)
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }))
    .await;
    // Everyone writes to the next, offline, all at once (each its messages
    // in turn on one replica: ids from two replicas follow acceptance order
    // only for messages accepted more than 50 ms apart).
    futures_util::future::join_all((0..USERS).map(|i| {
        let (me, next) = (&users[i], &users[(i + 1) % USERS]);
        let r = &r;
        async move {
            for m in 0..MESSAGES {
                let content = format!("{i}:{m}");
                let body = json!({"recipient_username": next.name, "encrypted_content": content});
                let (status, answer) = r[i % 2].post("/messages/", &me.token, body).await;
                assert_eq!(status, StatusCode::OK, "{answer}");
            }
        }
    }))
    .await;
    // Each reads them once, on either replica, oldest first: every message
    // of the previous user's, in the order written.
    futures_util::future::join_all((0..USERS).map(|i| {
        let (me, r) = (&users[i], &r);
        async move {
            let previous = (i + USERS - 1) % USERS;
            let written: Vec<String> = (0..MESSAGES).map(|m| format!("{previous}:{m}")).collect();
            let mut read = Vec::new();
            while read.len() < MESSAGES {
                let page = r[(i + 1) % 2].inbox(&me.token).await;
                assert!(!page.is_empty(), "{} of {MESSAGES} read", read.len());
                read.extend(page);
            }
            assert_eq!(read, written);
            assert!(r[i % 2].inbox(&me.token).await.is_empty());
            // Both contacts accepted, seen from both replicas.
            for app in r {
                let (status, contacts) = app.get("/me/contacts/", &me.token).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(contacts.as_array().map(Vec::len), Some(2), "{contacts}");
            }
        }
    }))
    .await;
    // Sessions: a refresh rotates on one replica, the old token is refused
    // on the other (and ends the session), a logout refuses the token.
    futures_util::future::join_all((0..USERS).map(|i| {
        let r = &r;
        async move {
            let login = r[i % 2].login_answer(&name(i)).await;
            let first = login["refresh_token"].as_str().unwrap();
            let (status, rotated) = r[(i + 1) % 2].refresh(first).await;
            assert_eq!(status, StatusCode::OK, "{rotated}");
            let (status, _) = r[i % 2].refresh(first).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let access = rotated["access_token"].as_str().unwrap();
            let (status, _) = r[i % 2].get("/me/contacts/", access).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "ended with the reuse");
        }
    }))
    .await;
}

/// A Postgres server of this test's own (Debian's, `initdb` into a
/// temporary directory, run as the `postgres` user when the test runs as
/// root), stopped and started again by the test.
struct PostgresServer {
    port: u16,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Where Debian keeps the newest Postgres's programs.
fn postgres_bin(program: &str) -> std::path::PathBuf {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql installed")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    versions.sort_unstable();
    let version = versions.last().expect("a Postgres version");
    format!("/usr/lib/postgresql/{version}/bin/{program}").into()
}

/// A Postgres program, to run as its owner (`postgres` when we are root:
/// Postgres refuses to run as root).
fn postgres_command(program: &str) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(postgres_bin(program));
        c
    } else {
        std::process::Command::new(postgres_bin(program))
    }
}

async fn as_postgres(program: &str, args: &[&str]) {
    let output = Command::from(postgres_command(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("Postgres's programs run");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `/readyz`'s status and answer.
async fn readiness(app: &TestApp) -> (StatusCode, Value) {
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

impl PostgresServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let data_arg = data.display().to_string();
        as_postgres(
            "initdb",
            &["-D", &data_arg, "-A", "trust", "-U", "postgres", "-N"],
        )
        .await;
        let server = Self {
            port: crate::helpers::free_port(),
            data,
            _dir: dir,
        };
        server.start_again().await;
        server
    }

    async fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off",
            self.port
        );
        let data = self.data.display().to_string();
        let log = self.data.join("log").display().to_string();
        as_postgres(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        )
        .await;
    }

    /// As a crash: every connection dropped at once, nothing shut down cleanly.
    async fn crash(&self) {
        let data = self.data.display().to_string();
        as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]).await;
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = postgres_command("pg_ctl")
            .args(["-D", &self.data.display().to_string(), "-m", "immediate"])
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
#[ignore = "needs Postgres and Redis: run with --include-ignored (CI does)"]
async fn a_postgres_outage_under_traffic_loses_nothing_and_needs_no_restart() {
    let postgres = PostgresServer::start().await;
    let backend = Backend::own_database(&postgres.url(), &postgres.url()).await;
    exactly_once_through(backend, postgres, |r, postgres, _| {
        Box::pin(async move {
            postgres.crash().await;
            // Store routes answer 503 within seconds (not a hang, not a 500):
            // a login asks the store for its user.
            for app in r {
                let started = tokio::time::Instant::now();
                let response = app
                    .http
                    .post(app.url("/token"))
                    .form(&[("username", "nobody"), ("password", "whatever-it-is")])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "answered after {:?}",
                    started.elapsed()
                );
                reports_outage(app).await;
                let (_, ready) = readiness(app).await;
                assert_eq!(ready["store"], false, "{ready}");
                assert_eq!(ready["bus"], true, "{ready}");
            }
            // Down for a while: the traffic goes on meanwhile.
            tokio::time::sleep(Duration::from_secs(3)).await;
            postgres.start_again().await;
            within_failover("the store answers again", || async {
                readiness(&r[0]).await.1["store"] == true
            })
            .await;
        })
    })
    .await;
}
