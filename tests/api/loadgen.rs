//! A quick run of every load-generator scenario at small sizes, so that the
//! generator keeps working. Timing figures are printed, never asserted; what
//! must hold regardless of speed (nothing lost, exactly once) is.

use serde_json::Value;

use crate::helpers::spawn_with;

async fn run(url: &str, args: &[&str]) -> Value {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let prefix = format!(
        "run{}",
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--url", url, "--duration", "1", "--prefix", &prefix])
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
    let app = spawn_with(&["--address-visibility", "contacts"]).await;
    let url = format!("http://{}", app.addr);

    let direct = run(&url, &["ws-direct", "--connections", "6"]).await;
    assert!(direct["delivered"].as_u64().unwrap() > 0);
    assert_eq!(direct["lost"], 0);
    assert!(direct["latency"]["p99_ms"].is_number());

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
