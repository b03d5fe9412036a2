//! What a client cannot make the server hold: half-sent requests, more
//! connections than the cap, a write buffer that grows with pings it never
//! reads, a socket kept open by never reading its replies.

use std::{process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use secchat::config::{Switch, Visibility};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{connect_async, tungstenite::Message};

use crate::helpers::{PATIENCE, TestApp, WsClient, eventually, free_port, spawn_with};

/// Reads until the server closes the connection; what it sent before that.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return answer,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn half_sent_requests_are_dropped_after_the_header_deadline() {
    let app = spawn_with(|s| s.listen.header_read_timeout_secs = 1).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTT").await.unwrap();
        slow.push(stream);
    }
    // One header byte a second, never finishing.
    let mut dripping = TcpStream::connect(app.addr).await.unwrap();
    let drip = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaa" {
            if dripping.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    });
    // Meanwhile ordinary requests are answered.
    let (status, _) = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for stream in &mut slow {
        until_closed(stream, Duration::from_secs(10)).await;
    }
    assert!(drip.await.unwrap(), "the dripping client was cut off");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_at_once() {
    let app = spawn_with(|s| s.listen.max_connections = Some(4)).await;
    // Four connections that send nothing hold every place.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut fifth = TcpStream::connect(app.addr).await.unwrap();
    let answer = String::from_utf8(until_closed(&mut fifth, PATIENCE).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.ends_with(r#"{"detail":"Server busy; try again in a moment"}"#));
    // A place frees when a connection closes.
    drop(idle.pop());
    eventually("a request gets through again", || async {
        reqwest::get(app.url("/healthz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_replies_is_let_go_at_logout() {
    let app = spawn_with(|s| {
        s.presence.address_visibility = Visibility::Open;
        s.listen.ws_queue_len = 8;
        s.rates.rate_limits = Switch::Off; // it sends as fast as it can
    })
    .await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut watcher = app.ws(&carol.token).await;
    let (mut to_server, from_server) = app.ws(&bob.token).await.stream.split();
    assert_eq!(watcher.text().await, "系统消息: 用户 bob 已上线。");
    // Bob sends frames whose replies he never reads; each names a long,
    // unknown recipient.
    let name = "n".repeat(60 * 1024);
    let sender = tokio::spawn(async move {
        for _ in 0..400 {
            let frame = json!({"recipient_username": name, "content": "x"});
            to_server
                .send(Message::text(frame.to_string()))
                .await
                .unwrap();
        }
        to_server
    });
    let _to_server = tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .expect("the server kept reading bob's frames")
        .unwrap();
    let (status, _) = app.post("/logout", &bob.token, json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    // He is let go at once, although he still reads nothing.
    assert_eq!(watcher.text().await, "系统消息: 用户 bob 已下线。");
    drop(from_server);
}

/// The real binary, so that its memory can be read.
struct Server {
    child: tokio::process::Child,
    client: TestApp,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_secchat"))
            .args(["--bind", &addr])
            .env("RUST_LOG", "warn")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = TestApp::at(addr.parse().unwrap());
        eventually("the server answers", || async {
            client.http.get(client.url("/healthz")).send().await.is_ok()
        })
        .await;
        Self {
            child,
            client,
            _dir: dir,
        }
    }

    fn rss_mb(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kb / 1024.0
    }
}

#[tokio::test]
async fn pings_from_a_client_that_never_reads_do_not_grow_the_server() {
    let server = Server::start().await;
    let token = server.client.user("pinger").await.token;
    let (socket, _) = connect_async(server.client.ws_url(&format!("?token={token}")))
        .await
        .unwrap();
    let before = server.rss_mb();
    // Pings as fast as they go for a few seconds; the pongs are never read.
    let (mut to_server, _from_server) = socket.split();
    let ping = vec![7u8; 125];
    let flood = async {
        loop {
            if to_server
                .send(Message::Ping(ping.clone().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
    let grown = server.rss_mb() - before;
    println!("server RSS grew by {grown:.1} MB");
    assert!(grown < 32.0, "the server grew by {grown:.0} MB");
}

/// Whether a new WebSocket is let in: an open one answers a frame; one over
/// a cap is closed with 1013 "too many connections".
async fn admitted(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Option<WsClient> {
    let (stream, _) = connect_async(request).await.unwrap();
    let mut client = WsClient { stream };
    client
        .send_json(json!({"recipient_username": "nobody", "content": "x"}))
        .await;
    match client.stream.next().await {
        Some(Ok(Message::Text(_))) => Some(client),
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1013);
            assert_eq!(frame.reason.as_str(), "too many connections");
            None
        }
        other => panic!("neither admitted nor refused: {other:?}"),
    }
}

#[tokio::test]
async fn websockets_per_user_and_per_address_are_capped() {
    let app = spawn_with(|s| {
        s.listen.max_ws_per_user = 2;
        s.listen.max_ws_per_ip = 3;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    // Whether a new connection of `token` is let in.
    let admitted = |token: String| admitted(app.ws_url(&format!("?token={token}")));
    let first = admitted(alice.token.clone()).await.expect("alice's first");
    let _second = admitted(alice.token.clone()).await.expect("alice's second");
    assert!(
        admitted(alice.token.clone()).await.is_none(),
        "a third of alice's"
    );
    let _bobs = admitted(bob.token.clone()).await.expect("bob's first");
    assert!(
        admitted(bob.token.clone()).await.is_none(),
        "a fourth from this address"
    );
    // A place frees when a connection closes.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while admitted(bob.token.clone()).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_burst_of_logins_beyond_the_hash_queue_is_refused_at_once() {
    let app = spawn_with(|s| {
        s.accounts.max_concurrent_hashes = Some(1);
        s.accounts.max_queued_hashes = 1;
        s.rates.rate_limits = Switch::Off; // a burst of logins from one address
    })
    .await;
    app.register("alice").await;
    let form = [
        ("username", "alice".to_owned()),
        ("password", crate::helpers::password_of("alice")),
    ];
    let attempts = futures_util::future::join_all(
        (0..30).map(|_| app.http.post(app.url("/token")).form(&form).send()),
    )
    .await;
    let (mut admitted, mut refused) = (0, 0);
    for response in attempts {
        let response = response.unwrap();
        match response.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.headers()["retry-after"], "1");
                let body: serde_json::Value = response.json().await.unwrap();
                assert!(body["detail"].is_string(), "{body}");
                refused += 1;
            }
            other => panic!("a login answered {other}"),
        }
    }
    assert!(
        admitted >= 1 && refused >= 1,
        "{admitted} admitted, {refused} refused"
    );
    // The burst over, logins go through again.
    app.login("alice", None).await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let app = spawn_with(|s| s.listen.body_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"username\"",
        )
        .await
        .unwrap();
    let answer =
        String::from_utf8(until_closed(&mut stream, Duration::from_secs(10)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.ends_with(r#"{"detail":"Request body not received in time"}"#),
        "{answer}"
    );
}

/// Connections that send nothing, half the HTTP/2 preface, or the whole
/// preface and then nothing hold a place under the cap only until the header
/// deadline: protocol detection and the HTTP/2 handshake are under it too.
#[tokio::test]
async fn silent_connections_are_dropped_whatever_they_began() {
    let app = spawn_with(|s| {
        s.listen.header_read_timeout_secs = 1;
        // The three silent ones and the test client's own pooled connection.
        s.listen.max_connections = Some(4);
    })
    .await;
    let dropped = r#"secchat_connections_dropped_total{reason="no_request"}"#;
    let before = app.metric(dropped).await;
    let openings: [&[u8]; 3] = [b"", b"PRI * HTTP/2", H2_PREFACE];
    let mut silent = Vec::new();
    for opening in openings {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        silent.push(stream);
    }
    for stream in &mut silent {
        until_closed(stream, Duration::from_secs(20)).await;
    }
    eventually("a request gets a place again", || async {
        reqwest::get(app.url("/healthz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let after = app.metric(dropped).await;
    assert!(after >= before + 3.0, "{before} -> {after}");
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 client connection (prior knowledge, as `h2c`), with the
/// flow-control window it opens for each answer.
async fn h2_client(
    app: &TestApp,
    window: u32,
) -> (
    h2::client::SendRequest<axum::body::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .unwrap();
    (client, tokio::spawn(connection))
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

/// HTTP/2 connections are capped in streams, and one with nothing in flight
/// for the idle time is closed (gracefully: it is told with GOAWAY).
#[tokio::test]
async fn http2_streams_are_capped_and_idle_connections_closed() {
    let app = spawn_with(|s| {
        s.listen.http2_max_streams = 4;
        s.listen.connection_idle_secs = 2;
    })
    .await;
    let (client, connection) = h2_client(&app, 65_535).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(h2_get("/healthz"), true).unwrap();
    let mut response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    while let Some(chunk) = response.body_mut().data().await {
        let chunk = chunk.unwrap();
        let _ = response
            .body_mut()
            .flow_control()
            .release_capacity(chunk.len());
    }
    assert_eq!(client.current_max_send_streams(), 4);
    tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap()
        .expect("closed gracefully");
}

/// An answer the client never takes (here an HTTP/2 client that opens no
/// flow-control window, so not one byte of it can be sent) is not held: the
/// connection is dropped at the answer deadline.
#[tokio::test]
async fn an_answer_never_read_is_dropped_at_the_answer_deadline() {
    let app = spawn_with(|s| s.listen.answer_timeout_secs = 2).await;
    let dropped = r#"secchat_connections_dropped_total{reason="answer_unread"}"#;
    let before = app.metric(dropped).await;
    let (client, connection) = h2_client(&app, 0).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(h2_get("/healthz"), true).unwrap();
    // The head is not flow-controlled; the body is.
    let read_body = async move {
        let mut response = response.await?;
        while let Some(chunk) = response.body_mut().data().await {
            chunk?;
        }
        Ok::<_, h2::Error>(())
    };
    let (read, closed) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(read_body, connection)
    })
    .await
    .expect("the connection was dropped");
    assert!(read.is_err(), "the answer never completed");
    drop(closed);
    assert!(app.metric(dropped).await >= before + 1.0);
}

/// A client that floods pings and then neither reads nor sends: the pongs
/// fill its socket, so the server's keep-alive ping cannot be written either.
/// That write has the write deadline too: the client is let go (its contact
/// sees it leave) instead of holding its connection until its token lapses.
#[tokio::test]
async fn a_client_that_stops_reading_after_a_ping_burst_is_let_go() {
    let app = spawn_with(|s| s.listen.ws_ping_secs = 1).await;
    let (alice, bob) = app.friends("alice", "bob").await;
    let mut watcher = app.ws(&bob.token).await;
    let (mut to_server, _from_server) = app.ws(&alice.token).await.stream.split();
    assert_eq!(watcher.text().await, "系统消息: 用户 alice 已上线。");
    // About 12 MB of pongs: more than the socket buffers take.
    let ping = vec![7u8; 125];
    for _ in 0..100_000 {
        to_server
            .feed(Message::Ping(ping.clone().into()))
            .await
            .unwrap();
    }
    to_server.flush().await.unwrap();
    let left = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match watcher.stream.next().await {
                Some(Ok(Message::Text(text)))
                    if text.as_str() == "系统消息: 用户 alice 已下线。" =>
                {
                    return;
                }
                Some(Ok(_)) => {}
                other => panic!("the watcher lost its connection: {other:?}"),
            }
        }
    })
    .await;
    assert!(left.is_ok(), "the silent client was never let go");
}

/// The per-address WebSocket cap counts an IPv6 /64 as one address, as the
/// rate limits do: a client cannot pass it by using more of its own /64.
#[tokio::test]
async fn the_websocket_cap_counts_an_ipv6_64_as_one_address() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_with(|s| {
        s.listen.max_ws_per_ip = 2;
        s.listen.max_ws_per_user = 100;
        s.listen.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let alice = app.user("alice").await;
    let from = |address: &'static str| {
        let mut request = app
            .ws_url(&format!("?token={}", alice.token))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", address.parse().unwrap());
        admitted(request)
    };
    let _one = from("2001:db8:1:2::1").await.expect("the first of the /64");
    let _two = from("2001:db8:1:2:ffff::9").await.expect("the second");
    assert!(
        from("2001:db8:1:2::3").await.is_none(),
        "a third of the same /64"
    );
    let _other = from("2001:db8:1:3::1").await.expect("another /64");
}
