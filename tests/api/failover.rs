//! Redis failover under traffic (issue "Scale out for real"): replicas on a
//! Sentinel-watched master and replica follow a failover by themselves. These
//! start their own Redis processes (Debian's redis-server, in sentinel mode
//! for the sentinels) and need Postgres, so they are ignored by a plain
//! `cargo test`; CI runs them with `--include-ignored`.

use std::{collections::HashMap, process::Stdio, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::{
    delivery::{direct, frame},
    helpers::{Backend, TestApp, WsClient, eventually_within, free_port},
};

/// How long a failover may take here: sentinels call the master down after
/// 1 s, then elect and promote.
const FAILOVER: Duration = Duration::from_secs(30);

/// Polls `check` for as long as a failover may take (the helpers' usual
/// patience is for a quiet server, not a Redis changing hands).
async fn within_failover<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, FAILOVER, check).await
}

/// A master, its replica and three sentinels (quorum 2), each a process of
/// this test's own.
struct SentinelSet {
    master_port: u16,
    sentinel_ports: Vec<u16>,
    master: Child,
    _others: Vec<Child>,
    _dir: tempfile::TempDir,
}

async fn redis_cmd(port: u16, args: &[&str]) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.ok()
}

fn redis_server(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server installed")
}

impl SentinelSet {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (master_port, replica_port) = (free_port(), free_port());
        let node = |port: u16| {
            vec![
                // Replication writes a snapshot even without `save`: into the temporary directory.
                "--dir".into(),
                dir.path().display().to_string(),
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
            ]
        };
        let master = redis_server(&node(master_port));
        let mut replica_args = node(replica_port);
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ]);
        let mut others = vec![redis_server(&replica_args)];
        within_failover("the replica follows the master", || async {
            matches!(redis_cmd(replica_port, &["INFO", "replication"]).await,
                Some(redis::Value::BulkString(info)) if String::from_utf8_lossy(&info).contains("master_link_status:up"))
        })
        .await;
        let sentinel_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for port in &sentinel_ports {
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor secchat 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds secchat 1000\n\
                     sentinel failover-timeout secchat 5000\n\
                     sentinel parallel-syncs secchat 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            others.push(redis_server(&[
                conf.display().to_string(),
                "--sentinel".into(),
            ]));
        }
        // Sentinels find the replica and each other through the master (hello
        // messages every 2 s): a failover needs them to.
        for port in &sentinel_ports {
            tokio::time::timeout(FAILOVER, async {
                loop {
                    let known = redis_cmd(*port, &["SENTINEL", "MASTER", "secchat"]).await;
                    if let Some(redis::Value::Array(fields)) = known {
                        let text: Vec<String> = fields
                            .iter()
                            .filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok())
                            .collect();
                        let field = |name: &str| {
                            text.iter()
                                .position(|t| t == name)
                                .and_then(|i| text.get(i + 1))
                                .cloned()
                        };
                        if field("num-slaves").as_deref() == Some("1")
                            && field("num-other-sentinels").as_deref() == Some("2")
                        {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .expect("the sentinels know the replica and each other");
        }
        Self {
            master_port,
            sentinel_ports,
            master,
            _others: others,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/secchat", hosts.join(","))
    }

    /// The master's port as the first sentinel reports it.
    async fn master_reported(&self) -> Option<String> {
        let answer = redis_cmd(
            self.sentinel_ports[0],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "secchat"],
        )
        .await?;
        let pair: Vec<String> = redis::from_redis_value(answer).ok()?;
        pair.get(1).cloned()
    }
}

/// Sends `content` with `client_id` until the server says `sent` (an error
/// while Redis fails over is answered by sending again, as clients do).
async fn send_until_sent(a: &mut WsClient, content: &str, client_id: &str) {
    let deadline = tokio::time::Instant::now() + FAILOVER;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id} never sent"
        );
        a.send_json(direct("bob", content, Some(client_id))).await;
        loop {
            let f = frame(a).await;
            if f["type"] == "sent" && f["client_id"] == client_id {
                return;
            }
            if f["error"].is_string() && f["client_id"] == client_id {
                tokio::time::sleep(Duration::from_millis(200)).await;
                break; // again
            }
            // The offline status, or another message's late answer.
        }
    }
}

#[tokio::test]
#[ignore = "needs Postgres and redis-server: run with --include-ignored (CI does)"]
async fn a_sentinel_failover_under_traffic_loses_nothing_and_repeats_nothing() {
    let mut set = SentinelSet::start().await;
    let backend = Backend::cluster_on_redis(&set.url()).await;
    let r: Vec<TestApp> = futures_util::future::join_all(
        (0..2).map(|_| backend.spawn(|s| s.presence.presence_lease_secs = 5)),
    )
    .await;
    let (alice, bob) = r[0].friends("alice", "bob").await;
    let mut a = r[0].ws(&alice.token).await;
    let b = r[1].ws_manual(&bob.token).await;

    // Bob's side reads and acknowledges everything, counting each content.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut b = b;
        // Quiet stretches are expected while Redis fails over: no deadline here.
        while let Some(Ok(message)) = b.stream.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(f) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let (Some(id), Some(content)) = (f["id"].as_i64(), f["content"].as_str()) {
                b.ack(&[id]).await;
                if seen_tx.send(content.to_owned()).is_err() {
                    return;
                }
            }
        }
    });

    let total = 40;
    let mut outage_seen = false;
    for i in 0..total {
        if i == 10 {
            set.master.kill().await.unwrap();
            let old = set.master_port.to_string();
            // The replicas say they cannot fan out, then recover by themselves.
            within_failover("a replica reports the outage", || async {
                let response = r[1].http.get(r[1].url("/readyz")).send().await.unwrap();
                response.status() == StatusCode::SERVICE_UNAVAILABLE
            })
            .await;
            outage_seen = true;
            tokio::time::timeout(FAILOVER, async {
                while set.master_reported().await.as_deref() == Some(old.as_str()) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .expect("the sentinels promote the replica");
        }
        send_until_sent(&mut a, &format!("message {i}"), &format!("m{i}")).await;
    }
    for app in &r {
        tokio::time::timeout(FAILOVER, async {
            while app
                .http
                .get(app.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                != StatusCode::OK
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("every replica ready again, without a restart");
    }
    assert!(outage_seen);

    // Every message accepted reached bob's open socket exactly once.
    let mut counts: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(FAILOVER, async {
        while counts.len() < total {
            let content = seen_rx.recv().await.expect("bob's reader runs");
            *counts.entry(content).or_default() += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {total} arrived", counts.len()));
    // Anything repeated would come now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(content) = seen_rx.try_recv() {
        *counts.entry(content).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    reader.abort();

    // Presence comes back on the new master without anyone reconnecting.
    within_failover("bob online again", || async {
        r[0].get("/users/bob/connection-info", &alice.token).await.0 == StatusCode::OK
    })
    .await;
    // And fan-out works both ways on the new master.
    let mut again = r[1].ws(&bob.token).await;
    a.send_json(json!({"recipient_username": "bob", "content": "on the new master"}))
        .await;
    assert_eq!(frame(&mut again).await["content"], "on the new master");
}
