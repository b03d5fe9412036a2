//! WebSocket scenarios: directed messages in pairs, broadcast, idle capacity.

use std::{
    borrow::Cow,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::Notify,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async, connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};
use tokio_util::sync::CancellationToken;

use crate::{
    Common,
    api::{self, User},
    measure::{self, Window},
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect_all(users: &[User], per_user: usize, parallel: usize) -> (Vec<Socket>, usize) {
    connect_all_with(users, per_user, parallel, "").await
}

/// Connects with `query` (`&…`) added to each WebSocket URL.
async fn connect_all_with(
    users: &[User],
    per_user: usize,
    parallel: usize,
    query: &str,
) -> (Vec<Socket>, usize) {
    let jobs = (0..users.len() * per_user).map(|i| {
        let url = api::ws_url(&users[i % users.len()]) + query;
        connect(url, i)
    });
    let results: Vec<_> = stream::iter(jobs).buffered(parallel).collect().await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    (results.into_iter().filter_map(Result::ok).collect(), failed)
}

/// The `i`-th connection to `url`. To a loopback IPv4 server it comes from one
/// of 64 loopback addresses in turn: one source address has only the
/// ephemeral port range (about 28,000 ports), too few for the 50,000
/// connections of the capacity run.
async fn connect(url: String, i: usize) -> anyhow::Result<Socket> {
    let request = url.into_client_request()?;
    let uri = request.uri();
    let server = match (uri.host().map(str::parse::<Ipv4Addr>), uri.port_u16()) {
        (Some(Ok(host)), Some(port)) if host.is_loopback() => SocketAddrV4::new(host, port),
        _ => return Ok(connect_async(request).await?.0),
    };
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % 64) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddrV4::new(source, 0).into())?;
    let stream = socket.connect(server.into()).await?;
    stream.set_nodelay(true)?;
    let (socket, _) = client_async(request, MaybeTlsStream::Plain(stream)).await?;
    Ok(socket)
}

/// Reads every socket until it has been quiet for a while: the join notices of
/// the setup must not spill into the measured window.
async fn settle(sockets: Vec<Socket>) -> Vec<Socket> {
    let quiet = Duration::from_millis(300);
    let jobs = sockets.into_iter().map(|mut socket| async move {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(quiet, socket.next()).await {}
        socket
    });
    futures_util::future::join_all(jobs).await
}

/// Nanoseconds since the run's epoch: the send timestamp carried in frames.
fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    id: Option<i64>,
}

#[derive(Args)]
pub struct DirectArgs {
    /// Connections (an even number: they send in pairs).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Total messages per second across all senders; 0 sends as fast as the
    /// window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages one sender may have undelivered at once.
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// Reliable delivery: connections acknowledge (`?ack=manual`), sending
    /// each message with a `client_id` and acknowledging what they receive
    /// in batches; `sent` and `delivered` receipts are counted.
    #[arg(long)]
    acknowledged: bool,
}

/// One sender's counters, shared with the receiver of its partner.
#[derive(Default)]
struct Lane {
    sent: AtomicU64,
    delivered: AtomicU64,
    progress: Notify,
}

/// Receipts counted by the receiving halves of acknowledging connections.
#[derive(Default)]
struct Receipts {
    sent: AtomicU64,
    delivered: AtomicU64,
}

type SharedSink = Arc<tokio::sync::Mutex<futures_util::stream::SplitSink<Socket, Message>>>;

pub async fn direct(common: &Common, args: DirectArgs) -> anyhow::Result<Value> {
    let n = (args.connections.max(2) / 2) * 2;
    let setup = Instant::now();
    let http = api::client();
    let prefix = common.prefix();
    let names = (0..n).map(|i| format!("{prefix}d{i}")).collect();
    let users = api::users(&http, common, names).await?;
    // Partners accept each other: a stranger's messages are always stored.
    api::befriend_pairs(&http, &users).await?;
    let query = if args.acknowledged { "&ack=manual" } else { "" };
    let (sockets, failed) = connect_all_with(&users, 1, 64, query).await;
    anyhow::ensure!(failed == 0, "{failed} connections failed");
    let sockets = settle(sockets).await;
    let setup_s = setup.elapsed().as_secs_f64();

    let lanes: Arc<Vec<Lane>> = Arc::new((0..n).map(|_| Lane::default()).collect());
    let receipts = Arc::new(Receipts::default());
    let stop = CancellationToken::new();
    let done = CancellationToken::new();
    let epoch = Instant::now();
    let per_sender_rate = args.rate / n as f64;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut sinks = Vec::new();
    let window = Window::start(common);
    for (i, socket) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        let sink: SharedSink = Arc::new(tokio::sync::Mutex::new(sink));
        // Kept until the end: the connections stay open while receipts drain.
        sinks.push(sink.clone());
        let partner = &users[i ^ 1].name;
        let frame_prefix = format!(r#"{{"recipient_username":"{partner}","content":"{i}:"#);
        senders.push(tokio::spawn(send_direct(
            sink.clone(),
            args.acknowledged,
            frame_prefix,
            lanes.clone(),
            i,
            args.window,
            per_sender_rate,
            // Senders take turns within each period rather than all at once.
            i as f64 / n as f64,
            stop.clone(),
            epoch,
        )));
        receivers.push(tokio::spawn(receive_direct(
            stream,
            args.acknowledged.then_some(sink),
            lanes.clone(),
            receipts.clone(),
            done.clone(),
            epoch,
        )));
    }
    tokio::time::sleep(common.window()).await;
    stop.cancel();
    for sender in senders {
        sender.await?;
    }
    let sent: u64 = lanes.iter().map(|l| l.sent.load(Ordering::Relaxed)).sum();
    let delivered = || {
        lanes
            .iter()
            .map(|l| l.delivered.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let drain_until = Instant::now() + Duration::from_secs(10);
    let receipted = || {
        !args.acknowledged || receipts.delivered.load(Ordering::Relaxed) >= delivered().min(sent)
    };
    while (delivered() < sent || !receipted()) && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (wall, cpu) = window.finish();
    let delivered = delivered();
    let redis = window.redis_us_per(delivered);
    done.cancel();
    let mut latency = measure::histogram();
    for receiver in receivers {
        latency.add(receiver.await?)?;
    }
    drop(sinks);
    Ok(json!({
        "scenario": if args.acknowledged { "ws-direct-acked" } else { "ws-direct" },
        "sent_receipts": receipts.sent.load(Ordering::Relaxed),
        "delivered_receipts": receipts.delivered.load(Ordering::Relaxed),
        "replicas": common.urls.len(),
        "connections": n,
        "target_rate": args.rate,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "window_s": (wall * 100.0).round() / 100.0,
        "sent": sent,
        "delivered": delivered,
        "lost": sent - delivered.min(sent),
        "delivered_per_s": measure::rate(delivered, wall),
        "latency": measure::summary(&latency),
        "server_cpu_s": cpu,
        "server_cpu_us_per_message": measure::cpu_us_per(cpu, delivered),
        "redis_cpu_us_per_message": redis,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn send_direct(
    sink: SharedSink,
    with_client_ids: bool,
    frame_prefix: String,
    lanes: Arc<Vec<Lane>>,
    me: usize,
    window: u64,
    rate: f64,
    phase: f64,
    stop: CancellationToken,
    epoch: Instant,
) {
    let lane = &lanes[me];
    let mut ticker = (rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut t =
            tokio::time::interval_at(tokio::time::Instant::now() + period.mul_f64(phase), period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        if let Some(ticker) = &mut ticker {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
        }
        // Wait for room in the window.
        let room = loop {
            let progress = lane.progress.notified();
            let in_flight = lane
                .sent
                .load(Ordering::Relaxed)
                .saturating_sub(lane.delivered.load(Ordering::Relaxed));
            if in_flight < window {
                break window - in_flight;
            }
            tokio::select! {
                _ = progress => {}
                _ = stop.cancelled() => return,
            }
        };
        let burst = if ticker.is_some() { 1 } else { room };
        // Counted before sending, so a fast answer never outruns the count.
        lane.sent.fetch_add(burst, Ordering::Relaxed);
        let mut sink = sink.lock().await;
        for _ in 0..burst {
            seq += 1;
            let frame = if with_client_ids {
                format!(
                    "{frame_prefix}{seq}:{}\",\"client_id\":\"{seq}\"}}",
                    now_ns(epoch)
                )
            } else {
                format!("{frame_prefix}{seq}:{}\"}}", now_ns(epoch))
            };
            if sink.feed(Message::text(frame)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Acknowledges `ids` in one frame.
async fn acknowledge(sink: &SharedSink, ids: &mut Vec<i64>) {
    let frame = json!({"type": "ack", "ids": ids}).to_string();
    ids.clear();
    let _ = sink.lock().await.send(Message::text(frame)).await;
}

/// Reads a connection's frames: messages (timed, and with `acks`,
/// acknowledged in batches: at 64 ids, or when nothing more is ready) and
/// receipts.
async fn receive_direct(
    mut stream: futures_util::stream::SplitStream<Socket>,
    acks: Option<SharedSink>,
    lanes: Arc<Vec<Lane>>,
    receipts: Arc<Receipts>,
    done: CancellationToken,
    epoch: Instant,
) -> Histogram<u64> {
    let mut latency = measure::histogram();
    let mut unacked = Vec::new();
    loop {
        let idle = Duration::from_millis(if unacked.is_empty() { 3_600_000 } else { 2 });
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = tokio::time::sleep(idle) => {
                if let Some(sink) = &acks {
                    acknowledge(sink, &mut unacked).await;
                }
                continue;
            }
            _ = done.cancelled() => break,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            if frame.is_none() {
                break;
            }
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        match frame.kind.as_deref() {
            Some("p2p_message") => {}
            Some("sent") => {
                receipts.sent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some("delivered") => {
                receipts.delivered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            _ => continue,
        }
        if let (Some(sink), Some(id)) = (&acks, frame.id) {
            unacked.push(id);
            if unacked.len() >= 64 {
                acknowledge(sink, &mut unacked).await;
            }
        }
        let mut parts = frame.content.as_deref().unwrap_or_default().split(':');
        let (Some(Ok(from)), Some(_seq), Some(Ok(sent_ns))) = (
            parts.next().map(str::parse::<usize>),
            parts.next(),
            parts.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        measure::record(
            &mut latency,
            Duration::from_nanos(now_ns(epoch).saturating_sub(sent_ns)),
        );
        if let Some(lane) = lanes.get(from) {
            lane.delivered.fetch_add(1, Ordering::Relaxed);
            lane.progress.notify_one();
        }
    }
    latency
}

#[derive(Args)]
pub struct BroadcastArgs {
    /// Connections: one sender and the rest receivers.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Broadcast frames per second; 0 sends as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Frames the slowest receivers may lag behind, in total.
    #[arg(long, default_value_t = 8)]
    window: u64,
}

pub async fn broadcast(common: &Common, args: BroadcastArgs) -> anyhow::Result<Value> {
    let n = args.connections.max(2);
    let setup = Instant::now();
    let http = api::client();
    let prefix = common.prefix();
    let names = (0..n).map(|i| format!("{prefix}b{i}")).collect();
    let users = api::users(&http, common, names).await?;
    let (sockets, failed) = connect_all(&users, 1, 64).await;
    anyhow::ensure!(failed == 0, "{failed} connections failed");
    let mut sockets = settle(sockets).await;
    let setup_s = setup.elapsed().as_secs_f64();

    let receivers_n = (n - 1) as u64;
    let deliveries = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let done = CancellationToken::new();
    let epoch = Instant::now();
    let marker = format!("{}: b:", users[0].name);
    let mut sender = sockets.remove(0);
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let (deliveries, progress, done, marker) = (
                deliveries.clone(),
                progress.clone(),
                done.clone(),
                marker.clone(),
            );
            tokio::spawn(async move {
                let (_sink, mut stream) = socket.split();
                let mut latency = measure::histogram();
                loop {
                    let frame = tokio::select! {
                        frame = stream.next() => frame,
                        _ = done.cancelled() => break,
                    };
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            let Some(rest) = text.strip_prefix(marker.as_str()) else {
                                continue;
                            };
                            if let Some(Ok(sent_ns)) = rest.split(':').nth(1).map(str::parse::<u64>)
                            {
                                measure::record(
                                    &mut latency,
                                    Duration::from_nanos(now_ns(epoch).saturating_sub(sent_ns)),
                                );
                            }
                            deliveries.fetch_add(1, Ordering::Relaxed);
                            progress.notify_one();
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                latency
            })
        })
        .collect();

    let window = Window::start(common);
    let stop_at = Instant::now() + common.window();
    let mut ticker =
        (args.rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate)));
    let mut frames = 0u64;
    while Instant::now() < stop_at {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        // Keep the receivers, in total, within `window` frames of the sender
        // (until the window ends: a broadcast refused or lost never arrives,
        // and is counted `lost` below).
        while deliveries.load(Ordering::Relaxed) + args.window * receivers_n < frames * receivers_n
            && Instant::now() < stop_at
        {
            let notified = progress.notified();
            if deliveries.load(Ordering::Relaxed) + args.window * receivers_n
                >= frames * receivers_n
            {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
        frames += 1;
        sender
            .send(Message::text(format!("b:{frames}:{}", now_ns(epoch))))
            .await?;
    }
    let expected = frames * receivers_n;
    let drain_until = Instant::now() + Duration::from_secs(10);
    while deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (wall, cpu) = window.finish();
    let delivered = deliveries.load(Ordering::Relaxed);
    let redis = window.redis_us_per(frames);
    done.cancel();
    let mut latency = measure::histogram();
    for receiver in receivers {
        latency.add(receiver.await?)?;
    }
    Ok(json!({
        "scenario": "ws-broadcast",
        "replicas": common.urls.len(),
        "connections": n,
        "target_rate": args.rate,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "window_s": (wall * 100.0).round() / 100.0,
        "frames": frames,
        "deliveries": delivered,
        "lost": expected - delivered.min(expected),
        "deliveries_per_s": measure::rate(delivered, wall),
        "latency": measure::summary(&latency),
        "server_cpu_s": cpu,
        "server_cpu_us_per_delivery": measure::cpu_us_per(cpu, delivered),
        "redis_cpu_us_per_broadcast": redis,
    }))
}

#[derive(Args)]
pub struct CapacityArgs {
    /// Idle connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Users the connections belong to (each holds several devices).
    #[arg(long, default_value_t = 100)]
    users: usize,
}

pub async fn capacity(common: &Common, args: CapacityArgs) -> anyhow::Result<Value> {
    let setup = Instant::now();
    let http = api::client();
    let prefix = common.prefix();
    let user_count = args.users.clamp(1, args.connections.max(1));
    let names = (0..user_count).map(|i| format!("{prefix}c{i}")).collect();
    let users = api::users(&http, common, names).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = measure::rss_bytes(&common.server_pids);

    let opening = Instant::now();
    let per_user = args.connections.div_ceil(user_count);
    let (sockets, failed) = connect_all(&users, per_user, 128).await;
    let open_s = opening.elapsed().as_secs_f64();
    // Keep every connection read (so pings are answered), as an idle client would.
    let alive = Arc::new(AtomicU64::new(sockets.len() as u64));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let alive = alive.clone();
            tokio::spawn(async move {
                while let Some(Ok(_)) = socket.next().await {}
                alive.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(common.window()).await;
    let after = measure::rss_bytes(&common.server_pids);
    let held = alive.load(Ordering::Relaxed);
    for reader in &readers {
        reader.abort();
    }
    let mb = |b: u64| (b as f64 / 1048576.0 * 10.0).round() / 10.0;
    Ok(json!({
        "scenario": "conn-capacity",
        "replicas": common.urls.len(),
        "connections": per_user * user_count,
        "users": user_count,
        "failed": failed,
        "held_after_window": held,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "open_s": (open_s * 10.0).round() / 10.0,
        "server_rss_before_mb": (!common.server_pids.is_empty()).then(|| mb(before)),
        "server_rss_after_mb": (!common.server_pids.is_empty()).then(|| mb(after)),
        "server_bytes_per_connection": (!common.server_pids.is_empty() && held > 0)
            .then(|| (after.saturating_sub(before)) / held),
    }))
}
