//! A quick run of every load-generator scenario at small sizes against a real
//! server in this process, so that the generator keeps working. Timing figures
//! are printed, never asserted; what must hold regardless of speed (nothing
//! lost, exactly once) is.

use secchat::{
    config::{Settings, Switch, Visibility},
    startup::App,
};
use serde_json::Value;

/// An embedded server on a free port, with its own database.
async fn server(dir: &tempfile::TempDir) -> String {
    let settings = {
        let mut s = Settings::default();
        s.listen.bind = "127.0.0.1:0".parse().unwrap();
        s.storage.database_url = format!("sqlite://{}", dir.path().join("smoke.db").display());
        s.presence.address_visibility = Visibility::Contacts;
        // A load generator signs up and sends from one address, as fast as it can.
        s.rates.rate_limits = Switch::Off;
        s.listen.max_ws_per_ip = 1_000_000;
        s
    };
    let app = App::build(settings).await.expect("the server builds");
    let url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    url
}

async fn run(url: &str, args: &[&str]) -> Value {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let prefix = format!(
        "run{}",
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    run_as(url, args, &prefix).await
}

/// A run whose users are named with `prefix`.
async fn run_as(url: &str, args: &[&str], prefix: &str) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--url", url, "--duration", "1", "--prefix", prefix])
        .output()
        .await
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().expect("a result line");
    println!("{line}");
    serde_json::from_str(line).expect("one JSON line")
}

#[tokio::test]
async fn every_scenario_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = server(&dir).await;

    let direct = run(&url, &["ws-direct", "--connections", "6"]).await;
    assert!(direct["delivered"].as_u64().unwrap() > 0);
    assert_eq!(direct["lost"], 0);
    assert!(direct["latency"]["p99_ms"].is_number());

    // Runs sharing an accounts file reuse the users (and the pairs) set up
    // before: registering or befriending one again would be refused.
    let accounts = dir.path().join("accounts");
    let accounts = accounts.to_str().unwrap();
    for connections in ["6", "8"] {
        let shared = run_as(
            &url,
            &[
                "ws-direct",
                "--connections",
                connections,
                "--accounts",
                accounts,
            ],
            "shared",
        )
        .await;
        assert!(shared["delivered"].as_u64().unwrap() > 0);
        assert_eq!(shared["lost"], 0);
    }
    let lines = std::fs::read_to_string(accounts).unwrap();
    assert_eq!(lines.lines().count(), 8, "each user once: {lines}");

    let paced = run(&url, &["ws-direct", "--connections", "4", "--rate", "200"]).await;
    assert_eq!(paced["lost"], 0);

    let broadcast = run(&url, &["ws-broadcast", "--connections", "5"]).await;
    assert!(broadcast["deliveries"].as_u64().unwrap() > 0);
    assert_eq!(broadcast["lost"], 0);

    let online = run(
        &url,
        &["http-online", "--contacts", "10", "--concurrency", "4"],
    )
    .await;
    assert!(online["requests"].as_u64().unwrap() > 0);

    let offline = run(
        &url,
        &[
            "http-offline",
            "--messages",
            "300",
            "--users",
            "3",
            "--concurrency",
            "8",
        ],
    )
    .await;
    assert_eq!(offline["exactly_once"], true);
    assert_eq!(offline["fetched"], 300);

    let storm = run(
        &url,
        &["login-storm", "--contacts", "4", "--concurrency", "2"],
    )
    .await;
    assert!(storm["logins"].as_u64().unwrap() > 0);
    assert!(storm["probe_p99_ratio"].is_number());

    let pid = std::process::id().to_string();
    let capacity = run(
        &url,
        &[
            "conn-capacity",
            "--connections",
            "40",
            "--users",
            "4",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(capacity["failed"], 0);
    assert_eq!(capacity["held_after_window"], 40);
}
