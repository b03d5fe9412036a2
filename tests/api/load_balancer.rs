//! `deploy/local-cluster.sh`: three replica processes behind nginx, driven
//! through the load balancer's single address, WebSockets included.

use std::{net::TcpListener, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{Backend, WsClient, free_port, password_of};

struct LocalCluster {
    env: Vec<(String, String)>,
    lb: String,
}

impl LocalCluster {
    async fn start(backend: &Backend, state: &std::path::Path) -> Self {
        // Three consecutive free ports for the replicas.
        let base = loop {
            let port = free_port();
            if port < 65000 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok()) {
                break port;
            }
        };
        let lb_port = free_port();
        let redis = backend.redis.as_ref().expect("a cluster backend");
        let env = vec![
            ("LB_PORT".to_owned(), lb_port.to_string()),
            ("BASE_PORT".to_owned(), base.to_string()),
            ("STATE_DIR".to_owned(), state.display().to_string()),
            (
                "SECCHAT_BIN".to_owned(),
                env!("CARGO_BIN_EXE_secchat").to_owned(),
            ),
            ("DATABASE_URL".to_owned(), backend.database_url.clone()),
            ("REDIS_URL".to_owned(), redis.url.clone()),
            ("REDIS_PREFIX".to_owned(), redis.prefix.clone()),
            (
                "JWT_SECRET".to_owned(),
                crate::helpers::JWT_SECRET.to_owned(),
            ),
        ];
        let cluster = Self {
            env,
            lb: format!("127.0.0.1:{lb_port}"),
        };
        assert!(
            cluster.script("start").await,
            "local-cluster.sh start failed"
        );
        cluster
    }

    async fn script(&self, command: &str) -> bool {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local-cluster.sh");
        let run = Command::new("bash")
            .arg(script)
            .arg(command)
            .envs(self.env.iter().cloned())
            .status();
        tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .expect("script in time")
            .unwrap()
            .success()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.lb)
    }

    async fn ws(&self, token: &str) -> WsClient {
        let url = format!("ws://{}/ws?token={token}", self.lb);
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws through nginx");
        WsClient { stream }
    }
}

#[tokio::test]
#[ignore = "needs Postgres, Redis and nginx: run with --include-ignored (CI does)"]
async fn the_local_cluster_serves_through_one_address() {
    let backend = Backend::cluster().await;
    let state = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(&backend, state.path()).await;
    let http = reqwest::Client::new();

    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        let user = json!({"username": name, "email": format!("{name}@example.com"), "password": password_of(name), "public_key": "k"});
        let response = http
            .post(cluster.url("/users/"))
            .json(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let login: Value = http
            .post(cluster.url("/token"))
            .form(&[
                ("username", name.to_owned()),
                ("password", password_of(name)),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(login["access_token"].as_str().unwrap().to_owned());
    }
    let (alice, bob) = (&tokens[0], &tokens[1]);
    // Each adds the other: contacts both ways, so each sees the other's presence.
    for (token, friend) in [(alice, "bob"), (bob, "alice")] {
        let added = http
            .post(cluster.url("/me/contacts/"))
            .bearer_auth(token)
            .json(&json!({"friend_username": friend}))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), StatusCode::ACCEPTED);
    }
    // The request id nginx sets comes back.
    let ready = http.get(cluster.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(ready.headers().contains_key("x-request-id"));
    // Metrics are never served to the outside through the balancer, in any
    // spelling of the path.
    for path in ["/metrics", "/metrics/", "/metrics/x"] {
        let metrics = http.get(cluster.url(path)).send().await.unwrap();
        assert_eq!(metrics.status(), StatusCode::NOT_FOUND, "{path}");
    }

    // nginx hands connections round-robin to three replicas: of bob's two
    // sockets at least one is on another replica than alice's, and both receive.
    let mut a = cluster.ws(alice).await;
    let mut b1 = cluster.ws(bob).await;
    let mut b2 = cluster.ws(bob).await;
    assert_eq!(a.text().await, "系统消息: 用户 bob 已上线。");
    a.send_json(json!({"recipient_username": "bob", "content": "via nginx"}))
        .await;
    assert_eq!(b1.json().await["content"], "via nginx");
    assert_eq!(b2.json().await["content"], "via nginx");
    b1.send_text("hi alice").await;
    assert_eq!(a.text().await, "bob: hi alice");

    // Presence and offline messages through the balancer.
    let offline = http
        .post(cluster.url("/messages/"))
        .bearer_auth(alice)
        .json(&json!({"recipient_username": "bob", "encrypted_content": "stored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(offline.status(), StatusCode::OK);
    let inbox: Value = http
        .get(cluster.url("/messages/"))
        .bearer_auth(bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inbox[0]["encrypted_content"], "stored");
    let logout = http
        .post(cluster.url("/logout"))
        .bearer_auth(bob)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::OK);
    assert_eq!(b1.closed().await.0, 1008);
    assert_eq!(b2.closed().await.0, 1008);

    // Stopping drains: alice's socket is closed with 1001.
    assert!(cluster.script("stop").await);
    assert_eq!(a.closed().await.0, 1001);
}
