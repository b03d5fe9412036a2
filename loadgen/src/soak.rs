//! The soak: clients connecting, sending, disconnecting and reconnecting at
//! random for a while, some of them abusive, each from an address of its own
//! (the server must trust 127.0.0.1 as a proxy: `TRUSTED_PROXIES`). At the end
//! every message the server accepted must have been delivered or stored
//! exactly once, every abuse must have met its refusal, and the server's
//! memory must be back near where it started. It exits non-zero otherwise.
//!
//! Roles, by client number modulo 10:
//! - 0 flooder: directed frames as fast as it can, until closed with 1008;
//! - 1 giant: a frame over the size limit, closed with 1009;
//! - 2 sleeper: connects and never reads, while pesters write to it;
//! - 3 guesser: wrong passwords for its own account; never more than 10 in a
//!   row without being locked out (429);
//! - 4 pester: large directed messages to sleepers, within its limits;
//! - 9 lurker: holds what the server must not let it hold, in turn: a socket
//!   that sends nothing, half the HTTP/2 preface, the whole preface and
//!   nothing more, an inbox fetch whose answer it does not read, a WebSocket
//!   that floods pings and then neither reads nor sends (each must be closed
//!   by the server: the sockets within 30 s, the WebSockets by the end of the
//!   round), and an acknowledging WebSocket that reads messages to itself and
//!   acknowledges none (its mailbox must stay within its quota);
//! - 5–8 regular: directed messages (and now and then `POST /messages/`) to
//!   the regulars it is a contact of (a ring, three each side: a stranger's
//!   messages are always stored), within the limits, reconnecting every few
//!   seconds.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt, stream};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

use crate::{
    Common,
    api::{self, PASSWORD},
    measure,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Args)]
pub struct SoakArgs {
    /// Clients, each a user at an address of its own (at most 768).
    #[arg(long, default_value_t = 300)]
    clients: usize,
    /// The server's `MAILBOX_MAX_MESSAGES`: no lurker's mailbox may hold more.
    #[arg(long, default_value_t = 1000)]
    mailbox_max_messages: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Flooder,
    Giant,
    Sleeper,
    Guesser,
    Pester,
    Lurker,
    Regular,
}

fn role(i: usize) -> Role {
    match i % 10 {
        0 => Role::Flooder,
        1 => Role::Giant,
        2 => Role::Sleeper,
        3 => Role::Guesser,
        4 => Role::Pester,
        9 => Role::Lurker,
        _ => Role::Regular,
    }
}

/// Client `i`'s address: documentation ranges, 256 addresses each.
fn address(i: usize) -> String {
    let range = ["198.51.100", "203.0.113", "192.0.2"][i / 256 % 3];
    format!("{range}.{}", i % 256)
}

/// A small deterministic generator per client, so that runs repeat.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

#[derive(Default)]
struct Tally {
    // Between regulars: what was sent, refused, and received (by content id).
    sent: AtomicU64,
    refused_ws: AtomicU64,
    refused_http: AtomicU64,
    stored_replies: AtomicU64,
    received: Mutex<HashMap<String, u32>>,
    unexpected_closes: AtomicU64,
    // To sleepers: at most once.
    sent_to_sleepers: AtomicU64,
    refused_to_sleepers: AtomicU64,
    sleeper_received: Mutex<HashMap<String, u32>>,
    sleepers_cut_off: AtomicU64,
    // Abuse and its refusals.
    flood_sessions: AtomicU64,
    flood_closed_1008: AtomicU64,
    flood_error_frames: AtomicU64,
    giant_sessions: AtomicU64,
    giant_closed_1009: AtomicU64,
    guesses: AtomicU64,
    guesses_refused_429: AtomicU64,
    guesses_busy_503: AtomicU64,
    longest_unrefused_guessing: AtomicU64,
    lurks: AtomicU64,
    lurks_contained: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

struct Ctx {
    /// The server's mailbox quota in messages.
    mailbox_max_messages: usize,
    /// WebSockets lurkers left unread: kept open by the client until the
    /// server has closed every connection (or the check gives up).
    unread_sockets: Mutex<Vec<Socket>>,
    http: Client,
    url: String,
    names: Vec<String>,
    deadline: Instant,
    /// Which round this is: part of every message id.
    round: usize,
    tally: Arc<Tally>,
}

impl Ctx {
    async fn login(&self, i: usize, password: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(format!("{}/token", self.url))
            .header("X-Forwarded-For", address(i))
            .form(&[("username", self.names[i].as_str()), ("password", password)])
            .send()
            .await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body: Value = response.json().await.unwrap_or_default();
        if let Some(wait) = retry_after {
            body["retry_after"] = wait.into();
        }
        Ok((status, body))
    }

    /// A token for client `i`, waiting out any rate limit.
    async fn token(&self, i: usize) -> anyhow::Result<String> {
        loop {
            let (status, body) = self.login(i, PASSWORD).await?;
            if status == StatusCode::OK {
                return Ok(body["access_token"].as_str().context("a token")?.to_owned());
            }
            // Over a limit, or the server's password hashing is busy: as a
            // client should, wait as long as it says.
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
            {
                bail!("login of {} answered {status}: {body}", self.names[i]);
            }
            let wait = body["retry_after"].as_u64().unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }

    /// A WebSocket of client `i`'s, and the token it was opened with.
    async fn connect(&self, i: usize) -> anyhow::Result<(Socket, String)> {
        self.connect_with(i, "").await
    }

    /// The same, with more of a query (`&ack=manual`).
    async fn connect_with(&self, i: usize, query: &str) -> anyhow::Result<(Socket, String)> {
        let token = self.token(i).await?;
        let url = format!(
            "{}/ws?token={token}{query}",
            self.url.replacen("http", "ws", 1)
        );
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("X-Forwarded-For", address(i).parse()?);
        Ok((connect_async(request).await?.0, token))
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }
}

fn content_id(frame: &Value) -> Option<&str> {
    frame["content"].as_str().filter(|c| c.starts_with("soak:"))
}

fn record(map: &Mutex<HashMap<String, u32>>, id: &str) {
    *map.lock()
        .unwrap()
        .entry(id.split('|').next().unwrap_or(id).to_owned())
        .or_default() += 1;
}

/// Reads what a regular client receives: messages, and answers to its frames.
fn on_regular_frame(tally: &Tally, text: &str) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return; // a notice or a broadcast
    };
    if let Some(id) = content_id(&frame) {
        record(&tally.received, id);
    } else if frame.get("error").is_some() {
        tally.refused_ws.fetch_add(1, Relaxed);
    } else if frame.get("status").is_some() {
        tally.stored_replies.fetch_add(1, Relaxed);
    }
}

async fn regular(ctx: Arc<Ctx>, me: usize, friends: Vec<usize>) -> anyhow::Result<()> {
    let mut rng = Rng(me as u64 * 7919 + 1);
    let mut seq = 0u64;
    while ctx.running() {
        let (mut ws, token) = ctx.connect(me).await?;
        let session_end = (Instant::now() + rng.millis(1000, 5000)).min(ctx.deadline);
        let mut next_send = tokio::time::Instant::now();
        let mut closed_by_server = false;
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => on_regular_frame(&ctx.tally, &text),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => { closed_by_server = true; break; }
                },
                _ = tokio::time::sleep_until(next_send) => {
                    if Instant::now() >= session_end {
                        break;
                    }
                    let to = friends[rng.below(friends.len() as u64) as usize];
                    seq += 1;
                    let id = format!("soak:{}:{me}:{seq}", ctx.round);
                    if rng.below(5) == 0 {
                        // The HTTP path for offline messages.
                        let answer = ctx.http
                            .post(format!("{}/messages/", ctx.url))
                            .header("X-Forwarded-For", address(me))
                            .bearer_auth(&token)
                            .json(&json!({"recipient_username": ctx.names[to], "encrypted_content": id}))
                            .send()
                            .await;
                        ctx.tally.sent.fetch_add(1, Relaxed);
                        match answer.map(|r| r.status()) {
                            Ok(s) if s.is_success() => {}
                            Ok(s) if s == StatusCode::CONFLICT || s == StatusCode::TOO_MANY_REQUESTS => {
                                ctx.tally.refused_http.fetch_add(1, Relaxed);
                            }
                            other => {
                                ctx.tally.refused_http.fetch_add(1, Relaxed);
                                ctx.tally.error(format!("POST /messages/: {other:?}"));
                            }
                        }
                    } else {
                        let frame = json!({"recipient_username": ctx.names[to], "content": id});
                        if ws.send(Message::text(frame.to_string())).await.is_err() {
                            closed_by_server = true;
                            break;
                        }
                        ctx.tally.sent.fetch_add(1, Relaxed);
                    }
                    next_send += rng.millis(150, 350);
                }
            }
        }
        if closed_by_server {
            ctx.tally.unexpected_closes.fetch_add(1, Relaxed);
            ctx.tally
                .error(format!("{} was disconnected by the server", ctx.names[me]));
        } else {
            // A graceful close: whatever the server wrote before its close
            // frame is read, so nothing in flight is lost.
            let _ = ws.close(None).await;
            while let Ok(Some(Ok(frame))) =
                tokio::time::timeout(Duration::from_secs(15), ws.next()).await
            {
                if let Message::Text(text) = frame {
                    on_regular_frame(&ctx.tally, &text);
                }
            }
        }
        tokio::time::sleep(rng.millis(0, 1000)).await;
    }
    Ok(())
}

async fn flooder(ctx: Arc<Ctx>, me: usize) -> anyhow::Result<()> {
    let mut rng = Rng(me as u64 + 11);
    while ctx.running() {
        let (ws, _) = ctx.connect(me).await?;
        ctx.tally.flood_sessions.fetch_add(1, Relaxed);
        let (mut tx, mut rx) = ws.split();
        let frame = json!({"recipient_username": "nobody-at-all", "content": "flood"}).to_string();
        // Sends until the server closes the connection; the reader decides.
        let sender = tokio::spawn(async move {
            while tx.send(Message::text(frame.clone())).await.is_ok() {
                tokio::task::yield_now().await;
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let code = loop {
            match tokio::time::timeout_at(deadline, rx.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    if text.contains("too many") {
                        ctx.tally.flood_error_frames.fetch_add(1, Relaxed);
                    }
                }
                Ok(Some(Ok(Message::Close(close)))) => break close.map(|c| c.code),
                Ok(Some(Ok(_))) => {}
                _ => break None,
            }
        };
        sender.abort();
        if code == Some(CloseCode::Policy) {
            ctx.tally.flood_closed_1008.fetch_add(1, Relaxed);
        } else {
            ctx.tally.error(format!("a flood ended with {code:?}"));
        }
        tokio::time::sleep(rng.millis(1000, 3000)).await;
    }
    Ok(())
}

async fn giant(ctx: Arc<Ctx>, me: usize) -> anyhow::Result<()> {
    let mut rng = Rng(me as u64 + 13);
    while ctx.running() {
        let (mut ws, _) = ctx.connect(me).await?;
        ctx.tally.giant_sessions.fetch_add(1, Relaxed);
        let _ = ws.send(Message::text("g".repeat(70 * 1024))).await;
        let mut code = None;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(15), ws.next()).await
        {
            if let Message::Close(close) = frame {
                code = close.map(|c| c.code);
                break;
            }
        }
        if code == Some(CloseCode::Size) {
            ctx.tally.giant_closed_1009.fetch_add(1, Relaxed);
        } else {
            ctx.tally
                .error(format!("a giant frame ended with {code:?}"));
        }
        tokio::time::sleep(rng.millis(1000, 4000)).await;
    }
    Ok(())
}

/// How long the server may take to drop a socket a lurker holds: its header
/// deadline (the soak sets 5 s) with room for a busy machine.
const LURK_DEADLINE: Duration = Duration::from_secs(30);

async fn lurker(ctx: Arc<Ctx>, me: usize) -> anyhow::Result<()> {
    let server = ctx.url.trim_start_matches("http://").to_owned();
    let mut turn = me / 10;
    while ctx.running() {
        turn += 1;
        ctx.tally.lurks.fetch_add(1, Relaxed);
        if turn % 6 == 5 {
            hoard(&ctx, me).await?;
            continue;
        }
        if turn % 6 == 4 {
            // A ping burst (2.5 MB), then silence: the socket is kept, never
            // read. The server lets it go whether its pongs filled the socket
            // (its own ping cannot be written) or not (the client is silent).
            let (mut ws, _) = ctx.connect(me).await?;
            for _ in 0..20_000 {
                ws.feed(Message::Ping(vec![7u8; 125].into())).await?;
            }
            ws.flush().await?;
            ctx.unread_sockets.lock().unwrap().push(ws);
            ctx.tally.lurks_contained.fetch_add(1, Relaxed); // checked at the end
            continue;
        }
        let mut socket = TcpStream::connect(&server).await?;
        let opening = match turn % 6 {
            0 => Vec::new(),
            1 => b"PRI * HTTP/2".to_vec(),
            2 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            _ => format!(
                "GET /messages/?ack=manual HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {}\r\nX-Forwarded-For: {}\r\n\r\n",
                ctx.token(me).await?,
                address(me)
            )
            .into_bytes(),
        };
        socket.write_all(&opening).await?;
        // Nothing read for a while; then only to see whether the server let go.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(LURK_DEADLINE, async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if closed.is_ok() {
            ctx.tally.lurks_contained.fetch_add(1, Relaxed);
        } else {
            ctx.tally.error(format!(
                "a lurker's socket (turn {}) was held {LURK_DEADLINE:?}",
                turn % 6
            ));
        }
    }
    Ok(())
}

/// A connection that acknowledges, reads what it sends itself and
/// acknowledges none of it: what the server holds for it counts against its
/// mailbox, which must stay within the quota once the connection is gone.
async fn hoard(ctx: &Ctx, me: usize) -> anyhow::Result<()> {
    let (mut ws, token) = ctx.connect_with(me, "&ack=manual").await?;
    let frame =
        json!({"recipient_username": ctx.names[me], "content": "h".repeat(1024)}).to_string();
    // Within the frame budget (100 a connection at once), and past the quota
    // the soak gives mailboxes (50).
    for _ in 0..90 {
        ws.feed(Message::text(frame.clone())).await?;
    }
    ws.flush().await?;
    // Reads (never acknowledging) until the frames stop coming.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {}
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    // Released when the connection went: what the mailbox holds now.
    let mut held = 0;
    let mut next = format!("{}/messages/?ack=manual", ctx.url);
    loop {
        let response = ctx
            .http
            .get(&next)
            .header("X-Forwarded-For", address(me))
            .bearer_auth(&token)
            .send()
            .await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let link = response
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| Some(l.strip_prefix('<')?.split_once('>')?.0.to_owned()));
        let page: Vec<Value> = response.error_for_status()?.json().await?;
        held += page.len();
        match link {
            Some(path) if !page.is_empty() => next = format!("{}{path}", ctx.url),
            _ => break,
        }
    }
    if held <= ctx.mailbox_max_messages {
        ctx.tally.lurks_contained.fetch_add(1, Relaxed);
    } else {
        ctx.tally.error(format!(
            "a hoarder's mailbox holds {held} messages, over the quota of {}",
            ctx.mailbox_max_messages
        ));
    }
    Ok(())
}

async fn sleeper(ctx: Arc<Ctx>, me: usize) -> anyhow::Result<()> {
    let (mut ws, _) = ctx.connect(me).await?;
    tokio::time::sleep_until(ctx.deadline.into()).await;
    // Now it reads: what got through, and whether the server let it go.
    let mut cut_off = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Some(id) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .as_ref()
                    .and_then(content_id)
                {
                    record(&ctx.tally.sleeper_received, id);
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                cut_off = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
            Err(_) => break, // still open
        }
    }
    if cut_off {
        ctx.tally.sleepers_cut_off.fetch_add(1, Relaxed);
    }
    Ok(())
}

/// Wrong answers in a row that a working lock-out cannot let through: the
/// server's 5 free failures, then lock-outs of 1, 2, 4, 8 and 16 s while a
/// guesser waits 100 ms between tries.
const UNREFUSED_GUESSES_ALLOWED: u64 = 10;

async fn guesser(ctx: Arc<Ctx>, me: usize) -> anyhow::Result<()> {
    // Wrong-password answers since the last refusal. A 503 (the password
    // hashers are all busy) checks nothing and counts nothing, on the server
    // as here; on a busy machine most guesses get one, and then a guesser may
    // never fail often enough to be locked out, which is no defect.
    let mut unrefused = 0u64;
    while ctx.running() {
        let (status, body) = ctx.login(me, "not the password").await?;
        ctx.tally.guesses.fetch_add(1, Relaxed);
        match status {
            StatusCode::UNAUTHORIZED => {
                unrefused += 1;
                ctx.tally
                    .longest_unrefused_guessing
                    .fetch_max(unrefused, Relaxed);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                ctx.tally.guesses_busy_503.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                ctx.tally.guesses_refused_429.fetch_add(1, Relaxed);
                unrefused = 0;
                let wait = body["retry_after"].as_u64().unwrap_or(1).min(5);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            other => ctx
                .tally
                .error(format!("a wrong password answered {other}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn pester(ctx: Arc<Ctx>, me: usize, sleepers: Arc<Vec<usize>>) -> anyhow::Result<()> {
    let mut rng = Rng(me as u64 + 17);
    let padding = "p".repeat(30 * 1024);
    let (mut ws, _) = ctx.connect(me).await?;
    let mut seq = 0u64;
    let mut next_send = tokio::time::Instant::now();
    while ctx.running() {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"error\"") {
                        ctx.tally.refused_to_sleepers.fetch_add(1, Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    ctx.tally.error(format!("pester {} was disconnected", ctx.names[me]));
                    return Ok(());
                }
            },
            _ = tokio::time::sleep_until(next_send) => {
                let to = sleepers[rng.below(sleepers.len() as u64) as usize];
                seq += 1;
                let content = format!("soak:{}:{me}:{seq}|{padding}", ctx.round);
                let frame = json!({"recipient_username": ctx.names[to], "content": content});
                ws.send(Message::text(frame.to_string())).await?;
                ctx.tally.sent_to_sleepers.fetch_add(1, Relaxed);
                next_send += rng.millis(100, 200);
            }
        }
    }
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
        if matches!(&frame, Message::Text(t) if t.contains("\"error\"")) {
            ctx.tally.refused_to_sleepers.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

/// Waits (up to a minute) until the server reports no open WebSocket.
async fn wait_for_no_connections(ctx: &Ctx) -> bool {
    for _ in 0..120 {
        let metrics = ctx
            .http
            .get(format!("{}/metrics", ctx.url))
            .send()
            .await
            .ok();
        let text = match metrics {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        let open = text
            .lines()
            .find_map(|l| l.strip_prefix("secchat_ws_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if open == Some(0.0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Takes client `i`'s stored messages until none are left.
async fn drain(ctx: &Ctx, i: usize, into: &Mutex<HashMap<String, u32>>) -> anyhow::Result<()> {
    let token = ctx.token(i).await?;
    loop {
        let batch = api::fetch_inbox(&ctx.http, &ctx.url, &token).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for m in &batch {
            if let Some(id) = m["encrypted_content"]
                .as_str()
                .filter(|c| c.starts_with("soak:"))
            {
                record(into, id);
            }
        }
    }
}

/// Regulars on each side of a regular in the ring of contacts.
const RING_NEIGHBOURS: usize = 3;

/// Makes each regular a mutual contact of the next [`RING_NEIGHBOURS`] in
/// `regulars` (a ring); returns each one's contacts.
async fn befriend_ring(
    http: &Client,
    url: &str,
    names: &[String],
    ids: &[i64],
    regulars: &[usize],
) -> anyhow::Result<HashMap<usize, Vec<usize>>> {
    let setup = Ctx {
        mailbox_max_messages: usize::MAX,
        unread_sockets: Mutex::default(),
        round: 0,
        http: http.clone(),
        url: url.to_owned(),
        names: names.to_vec(),
        deadline: Instant::now(),
        tally: Arc::default(),
    };
    let tokens: Vec<String> = stream::iter(regulars.iter().map(|&i| setup.token(i)))
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let n = regulars.len();
    let mut friends: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut pairs = Vec::new();
    for p in 0..n {
        for k in 1..=RING_NEIGHBOURS.min(n.saturating_sub(1) / 2) {
            let q = (p + k) % n;
            friends.entry(regulars[p]).or_default().push(regulars[q]);
            friends.entry(regulars[q]).or_default().push(regulars[p]);
            pairs.push((p, q));
        }
    }
    let users: Vec<api::User> = regulars
        .iter()
        .zip(tokens)
        .map(|(&i, token)| api::User {
            id: ids[i],
            name: names[i].clone(),
            token,
            url: url.to_owned(),
            reused: false,
        })
        .collect();
    let jobs = pairs
        .into_iter()
        .map(|(p, q)| api::befriend(http, &users[p], std::slice::from_ref(&users[q])));
    stream::iter(jobs)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;
    Ok(friends)
}

pub async fn soak(common: &Common, args: SoakArgs) -> anyhow::Result<Value> {
    let n = args.clients.clamp(10, 768);
    let http = api::client();
    let url = common.url(0).to_owned();
    let prefix = common.prefix();
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}s{i}")).collect();
    let setup = Instant::now();
    let jobs = names.iter().enumerate().map(|(i, name)| {
        let (http, url) = (&http, &url);
        async move {
            let body = json!({"username": name, "email": format!("{name}@soak.test"), "password": PASSWORD, "public_key": "pk"});
            let response = http
                .post(format!("{url}/users/"))
                .header("X-Forwarded-For", address(i))
                .json(&body)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("registering {name}: {}", response.text().await?);
            }
            let user: Value = response.json().await?;
            user["id"].as_i64().context("a user id")
        }
    });
    let ids: Vec<i64> = stream::iter(jobs)
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let setup_s = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = measure::rss_bytes(&common.server_pids);

    // Two rounds of half the window each: the first warms the server up
    // (caches, pools, the allocator's reserves); after the second, its memory
    // must be back near where the first left it.
    let tally = Arc::new(Tally::default());
    let of = |r: Role| Arc::new((0..n).filter(|&i| role(i) == r).collect::<Vec<_>>());
    let (regulars, sleepers) = (of(Role::Regular), of(Role::Sleeper));
    let friends = befriend_ring(&http, &url, &names, &ids, &regulars).await?;
    let mut rss_between_rounds = Vec::new();
    let mut connections_closed = true;
    for round in 0..2 {
        let ctx = Arc::new(Ctx {
            unread_sockets: Mutex::default(),
            mailbox_max_messages: args.mailbox_max_messages,
            round,
            http: http.clone(),
            url: url.clone(),
            names: names.clone(),
            deadline: Instant::now() + common.window() / 2,
            tally: tally.clone(),
        });
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let ctx = ctx.clone();
                let (friends, sleepers) = (
                    friends.get(&i).cloned().unwrap_or_default(),
                    sleepers.clone(),
                );
                tokio::spawn(async move {
                    let result = match role(i) {
                        Role::Flooder => flooder(ctx.clone(), i).await,
                        Role::Giant => giant(ctx.clone(), i).await,
                        Role::Sleeper => sleeper(ctx.clone(), i).await,
                        Role::Guesser => guesser(ctx.clone(), i).await,
                        Role::Pester => pester(ctx.clone(), i, sleepers).await,
                        Role::Lurker => lurker(ctx.clone(), i).await,
                        Role::Regular => regular(ctx.clone(), i, friends).await,
                    };
                    if let Err(err) = result {
                        ctx.tally
                            .error(format!("client {i} ({:?}): {err:#}", role(i)));
                    }
                })
            })
            .collect();
        futures_util::future::join_all(tasks).await;
        // Messages handed back by connections that closed are stored in the
        // background, and a cut-off client's socket gets a grace period to
        // take its close frame: wait for both, then take every mailbox.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The lurkers' unread WebSockets too: the server must have let them go.
        connections_closed &= wait_for_no_connections(&ctx).await;
        ctx.unread_sockets.lock().unwrap().clear();
        for &i in regulars.iter() {
            drain(&ctx, i, &ctx.tally.received).await?;
        }
        for &i in sleepers.iter() {
            drain(&ctx, i, &ctx.tally.sleeper_received).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_between_rounds.push(measure::rss_bytes(&common.server_pids));
    }
    let (rss_warm, rss_after) = (rss_between_rounds[0], rss_between_rounds[1]);
    let ctx = Ctx {
        mailbox_max_messages: args.mailbox_max_messages,
        unread_sockets: Mutex::default(),
        http,
        url,
        names,
        deadline: Instant::now(),
        round: 2,
        tally,
    };
    let t = &ctx.tally;
    let load = |a: &AtomicU64| a.load(Relaxed);
    let received = t.received.lock().unwrap();
    let delivered = received.len() as u64;
    let duplicates: u64 = received
        .values()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    let sleeper_received = t.sleeper_received.lock().unwrap();
    let sleeper_duplicates: u64 = sleeper_received
        .values()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    let refused = load(&t.refused_ws) + load(&t.refused_http);
    let accepted = load(&t.sent) - refused;
    let errors = t.errors.lock().unwrap().clone();
    let mut failures = Vec::new();
    if duplicates > 0 || sleeper_duplicates > 0 {
        failures.push("a message arrived twice".to_owned());
    }
    if accepted != delivered {
        failures.push(format!(
            "{accepted} messages accepted, {delivered} delivered or stored"
        ));
    }
    if load(&t.flood_closed_1008) != load(&t.flood_sessions) {
        failures.push("a flood was not closed with 1008".into());
    }
    if load(&t.giant_closed_1009) != load(&t.giant_sessions) {
        failures.push("a giant frame was not closed with 1009".into());
    }
    if load(&t.longest_unrefused_guessing) > UNREFUSED_GUESSES_ALLOWED {
        failures.push(format!(
            "a guesser had {} wrong passwords in a row without being locked out",
            load(&t.longest_unrefused_guessing)
        ));
    }
    if !connections_closed {
        failures.push("WebSockets were still open 60 s after the end".into());
    }
    if load(&t.lurks_contained) != load(&t.lurks) {
        failures.push(format!(
            "{} of {} lurks got past a bound (a socket held, a mailbox over its quota)",
            load(&t.lurks) - load(&t.lurks_contained),
            load(&t.lurks)
        ));
    }
    if load(&t.unexpected_closes) > 0 {
        failures.push("a well-behaved client was disconnected".into());
    }
    // Memory back near its warm baseline: within a quarter more, or 32 MiB.
    let allowance = (rss_warm / 4).max(32 << 20);
    if !common.server_pids.is_empty() && rss_after > rss_warm + allowance {
        failures.push(format!(
            "server memory grew from {rss_warm} to {rss_after} bytes over the second round"
        ));
    }
    if !errors.is_empty() {
        failures.push(format!("client errors: {errors:?}"));
    }
    let result = json!({
        "scenario": "soak",
        "clients": n,
        "window_s": common.duration,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "regular": {
            "sent": load(&t.sent),
            "refused": refused,
            "stored_replies": load(&t.stored_replies),
            "delivered_or_stored": delivered,
            "duplicates": duplicates,
            "unexpected_closes": load(&t.unexpected_closes),
        },
        "to_sleepers": {
            "sent": load(&t.sent_to_sleepers),
            "refused": load(&t.refused_to_sleepers),
            "received_or_stored": sleeper_received.len(),
            "duplicates": sleeper_duplicates,
            "sleepers_cut_off": load(&t.sleepers_cut_off),
            "sleepers": sleepers.len(),
        },
        "abuse": {
            "flood_sessions": load(&t.flood_sessions),
            "flood_closed_1008": load(&t.flood_closed_1008),
            "flood_error_frames": load(&t.flood_error_frames),
            "giant_sessions": load(&t.giant_sessions),
            "lurks": load(&t.lurks),
            "lurks_contained": load(&t.lurks_contained),
            "giant_closed_1009": load(&t.giant_closed_1009),
            "guesses": load(&t.guesses),
            "guesses_refused_429": load(&t.guesses_refused_429),
            "guesses_busy_503": load(&t.guesses_busy_503),
            "longest_unrefused_guessing": load(&t.longest_unrefused_guessing),
        },
        "server_rss_mb": {
            "cold": rss_before as f64 / 1048576.0,
            "after_first_round": rss_warm as f64 / 1048576.0,
            "after_second_round": rss_after as f64 / 1048576.0,
        },
        "failures": failures,
    });
    if !failures.is_empty() {
        println!("{result}");
        bail!("the soak failed: {failures:?}");
    }
    Ok(result)
}
