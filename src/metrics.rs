//! What the server measures, exported in Prometheus text format at `/metrics`.
//!
//! The `metrics` facade has one recorder per process by design, so it is installed
//! once, however many apps a process (a test binary) builds. Label values come from
//! fixed sets: route templates and enums, never usernames or raw paths.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Drains the recorder's histograms into their summaries every few seconds
/// (what the exporter's own upkeep task does when it installs itself), until
/// shutdown.
pub fn spawn_upkeep(
    handle: PrometheusHandle,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = shutdown.cancelled() => break,
            }
        }
    })
}

/// Installs the process-wide recorder (once) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused
            // and /metrics shows nothing, which the metrics test would catch.
            let _ = metrics::set_global_recorder(recorder);
            per_message(); // registered with the recorder just installed
            register_fixed_series();
            handle
        })
        .clone()
}

pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    // Any other method a client invents is one label value, not one each.
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
        _ => "OTHER",
    };
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    counter!("secchat_http_requests_total", &labels).increment(1);
    histogram!("secchat_http_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
}

#[derive(Clone, Copy)]
pub enum Relay {
    Direct,
    Broadcast,
}

/// Handles of the metrics touched for every message, registered once: looking
/// a labelled metric up by name costs more than the relaying it counts.
struct PerMessage {
    direct_deliveries: Counter,
    broadcast_deliveries: Counter,
    accepted: [Counter; 3],
    delivery_latency: Histogram,
    published: [Counter; 5],
    received: [Counter; 5],
    bus_latency: Histogram,
}

static PER_MESSAGE: OnceLock<PerMessage> = OnceLock::new();

fn per_message() -> &'static PerMessage {
    PER_MESSAGE.get_or_init(|| {
        let kinds = ["direct", "broadcast", "close", "delivered", "unread"];
        PerMessage {
            direct_deliveries: counter!("secchat_ws_deliveries_total", "kind" => "direct"),
            broadcast_deliveries: counter!("secchat_ws_deliveries_total", "kind" => "broadcast"),
            accepted: [Accepted::WsDirect, Accepted::WsBroadcast, Accepted::Http]
                .map(|via| counter!("secchat_messages_accepted_total", "via" => via.label())),
            delivery_latency: histogram!("secchat_delivery_latency_seconds"),
            published: kinds.map(|kind| counter!("secchat_bus_published_total", "kind" => kind)),
            received: kinds.map(|kind| counter!("secchat_bus_received_total", "kind" => kind)),
            bus_latency: histogram!("secchat_bus_latency_seconds"),
        }
    })
}

/// How a message came to the server from its sender.
#[derive(Clone, Copy)]
pub enum Accepted {
    /// A directed WebSocket message (not an ephemeral one).
    WsDirect = 0,
    WsBroadcast = 1,
    /// `POST /messages/`.
    Http = 2,
}

impl Accepted {
    fn label(self) -> &'static str {
        match self {
            Accepted::WsDirect => "ws_direct",
            Accepted::WsBroadcast => "ws_broadcast",
            Accepted::Http => "http",
        }
    }
}

/// A message taken from its sender, to be relayed or stored.
pub fn accepted(via: Accepted) {
    per_message().accepted[via as usize].increment(1);
}

/// One directed message in this many is timed for
/// `secchat_delivery_latency_seconds`: timing each would add a clock read
/// and a histogram sample to every relayed message, and a sample of
/// thousands a second gives the same percentiles (BENCHMARKS.md).
pub const DELIVERY_LATENCY_SAMPLED_ONE_IN: i64 = 16;

/// A directed message queued for its recipient's connections on this
/// replica, `sent_at` being when the server accepted it (on any replica):
/// timed when its id is a multiple of [`DELIVERY_LATENCY_SAMPLED_ONE_IN`]
/// (ids are consecutive; ephemeral messages, id 0, always are).
pub fn delivery_latency(id: i64, sent_at: chrono::DateTime<chrono::Utc>) {
    if id % DELIVERY_LATENCY_SAMPLED_ONE_IN != 0 {
        return;
    }
    let elapsed = (chrono::Utc::now() - sent_at).to_std().unwrap_or_default();
    per_message().delivery_latency.record(elapsed.as_secs_f64());
}

/// Frames queued to local connections.
pub fn relayed(kind: Relay, deliveries: usize) {
    let counter = match kind {
        Relay::Direct => &per_message().direct_deliveries,
        Relay::Broadcast => &per_message().broadcast_deliveries,
    };
    counter.increment(deliveries as u64);
}

#[derive(Clone, Copy)]
pub enum StoredVia {
    /// `POST /messages/`.
    Http,
    /// A directed WebSocket message to a user connected nowhere.
    Offline,
    /// A directed message no connection managed to write.
    Undelivered,
}

pub fn messages_stored(via: StoredVia, count: usize) {
    let via = match via {
        StoredVia::Http => "http",
        StoredVia::Offline => "offline",
        StoredVia::Undelivered => "undelivered",
    };
    counter!("secchat_messages_stored_total", "via" => via).increment(count as u64);
}

/// Messages relayed to a connection that acknowledges but not held for it:
/// the recipient's mailbox had no room.
pub fn held_over_quota(count: usize) {
    counter!("secchat_messages_unheld_total").increment(count as u64);
}

pub fn login(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!("secchat_logins_total", "result" => result).increment(1);
}

/// The `limit` label of logins refused while their account is locked out.
pub const LOGIN_LOCKOUT: &str = "login_lockout";

/// The `limit` label of frames refused by one connection's own budget.
pub const WS_FRAMES_PER_CONNECTION: &str = "ws_frames_per_connection";

/// Events refused by the rate limit `limit` (`secchat_rate_limited_total`).
pub fn rate_limited(limit: &'static str, refused: u32) {
    counter!("secchat_rate_limited_total", "limit" => limit).increment(u64::from(refused));
}

/// A login or registration refused because too many hashes were waiting.
pub fn password_hash_refused() {
    counter!("secchat_password_hashes_refused_total").increment(1);
}

pub fn password_hashed(elapsed: Duration) {
    histogram!("secchat_password_hash_seconds").record(elapsed.as_secs_f64());
}

/// An open WebSocket connection, counted in `secchat_ws_connections` while alive.
pub struct WsConnectionGauge(());

impl WsConnectionGauge {
    pub fn open() -> Self {
        gauge!("secchat_ws_connections").increment(1.0);
        Self(())
    }
}

impl Drop for WsConnectionGauge {
    fn drop(&mut self) {
        gauge!("secchat_ws_connections").decrement(1.0);
    }
}

/// A connection refused because the replica holds as many as it may.
pub fn connection_refused() {
    counter!("secchat_connections_refused_total").increment(1);
}

/// A connection dropped by its watch: `no_request` (nothing whole arrived
/// within the header deadline) or `answer_unread` (an answer not taken within
/// the answer deadline).
pub fn connection_dropped(reason: &'static str) {
    counter!("secchat_connections_dropped_total", "reason" => reason).increment(1);
}

pub fn slow_consumer_closed() {
    counter!("secchat_ws_slow_consumers_closed_total").increment(1);
}

/// The kind of a fan-out event, for the per-kind counters.
#[derive(Clone, Copy)]
pub enum EventKind {
    Direct = 0,
    Text = 1,
    Close = 2,
    Delivered = 3,
    Unread = 4,
}

pub fn bus_published(kind: EventKind) {
    per_message().published[kind as usize].increment(1);
}

/// An event that reached this replica, `elapsed` after another replica
/// published it (`None` in process).
pub fn bus_received(kind: EventKind, elapsed: Option<Duration>) {
    per_message().received[kind as usize].increment(1);
    if let Some(elapsed) = elapsed {
        per_message().bus_latency.record(elapsed.as_secs_f64());
    }
}

#[derive(Clone, Copy)]
pub enum Backend {
    Store,
    Redis,
}

pub fn backend_error(backend: Backend) {
    let backend = match backend {
        Backend::Store => "store",
        Backend::Redis => "redis",
    };
    counter!("secchat_backend_errors_total", "backend" => backend).increment(1);
}

/// How the online panel came by the viewer's contact list.
#[derive(Clone, Copy)]
pub enum ContactList {
    /// Cached, and still current.
    Cached,
    /// Cached, but changed since: read again.
    Changed,
    /// Not cached (first read here, evicted, or older than its maximum age).
    Uncached,
}

pub fn online_panel_read(list: ContactList) {
    let list = match list {
        ContactList::Cached => "cached",
        ContactList::Changed => "changed",
        ContactList::Uncached => "uncached",
    };
    counter!("secchat_online_panel_reads_total", "list" => list).increment(1);
}

/// Users online (by presence lease), as this replica last counted them.
pub fn online_users(count: u64) {
    gauge!("secchat_online_users").set(count as f64);
}

/// Every series whose labels come from a fixed set, at zero: a dashboard or
/// an alert reads a series from a replica's first scrape on, not only after
/// the first time it moved (a `rate()` over a missing series is no data,
/// not zero). Rate limits' names are registered by whoever knows them.
fn register_fixed_series() {
    for via in ["http", "offline", "undelivered"] {
        counter!("secchat_messages_stored_total", "via" => via).increment(0);
    }
    for result in ["success", "failure"] {
        counter!("secchat_logins_total", "result" => result).increment(0);
    }
    for reason in ["no_request", "answer_unread"] {
        counter!("secchat_connections_dropped_total", "reason" => reason).increment(0);
    }
    for backend in ["store", "redis"] {
        counter!("secchat_backend_errors_total", "backend" => backend).increment(0);
    }
    for list in ["cached", "changed", "uncached"] {
        counter!("secchat_online_panel_reads_total", "list" => list).increment(0);
    }
    for name in [
        "secchat_messages_unheld_total",
        "secchat_password_hashes_refused_total",
        "secchat_connections_refused_total",
        "secchat_ws_slow_consumers_closed_total",
    ] {
        counter!(name).increment(0);
    }
    gauge!("secchat_ws_connections").increment(0.0);
    gauge!("secchat_online_users").increment(0.0);
    gauge!("secchat_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Registers the `limit` label values of `secchat_rate_limited_total`, at zero.
pub fn rate_limits_known(limits: impl IntoIterator<Item = &'static str>) {
    for limit in limits
        .into_iter()
        .chain([LOGIN_LOCKOUT, WS_FRAMES_PER_CONNECTION])
    {
        counter!("secchat_rate_limited_total", "limit" => limit).increment(0);
    }
}

/// What this replica was started with that alerts compare against: the
/// connections it takes at most (`MAX_CONNECTIONS`), and how many signing
/// keys it accepts (more than one for long: a rotation left half done).
pub fn configured(max_connections: usize, signing_keys: usize) {
    gauge!("secchat_connections_limit").set(max_connections as f64);
    gauge!("secchat_signing_keys").set(signing_keys as f64);
}

/// Whether each backend answered a ping, and how long it took, as of the
/// scrape that asked (`secchat_backend_up`, `secchat_backend_ping_seconds`),
/// and whether the replica is ready (`secchat_ready`).
pub fn readiness(backends: &[(&'static str, bool, Duration)], ready: bool) {
    for (backend, up, took) in backends {
        gauge!("secchat_backend_up", "backend" => *backend).set(if *up { 1.0 } else { 0.0 });
        gauge!("secchat_backend_ping_seconds", "backend" => *backend).set(took.as_secs_f64());
    }
    gauge!("secchat_ready").set(if ready { 1.0 } else { 0.0 });
}
