//! Every setting the server reads: one typed struct of settings by concern,
//! each group flattened into the one command line (its own heading in
//! `--help`), under the same flags and environment names.
//!
//! Each field comes from a `--flag` or, failing that, from the environment variable
//! named beside it; nothing else in the crate reads the environment.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use ipnet::IpNet;
use secrecy::SecretString;

use crate::{auth::jwt::SigningKeys, domain::Rate};

/// File descriptors kept back from client connections: database and Redis
/// connections, the listener, log and database files.
const FD_RESERVE: usize = 128;

/// Where the embedded default keeps its database when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://secchat.db";

#[derive(Parser, Debug, Clone)]
#[command(name = "secchat", version, about = "Secure instant-messaging server")]
pub struct Settings {
    /// Probe the server at BIND (`/healthz`) and exit 0 if it answers: a health
    /// check for images that have no curl.
    #[arg(long)]
    pub healthcheck: bool,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub listen: ListenSettings,

    #[command(flatten)]
    pub storage: StorageSettings,

    #[command(flatten)]
    pub accounts: AccountSettings,

    #[command(flatten)]
    pub presence: PresenceSettings,

    #[command(flatten)]
    pub delivery: DeliverySettings,

    #[command(flatten)]
    pub rates: RateSettings,

    #[command(flatten)]
    pub turn: TurnSettings,

    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

/// What the binary does instead of serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Copy the embedded default's live SQLite database (DATABASE_URL) into
    /// FILE, a consistent snapshot taken while the server runs; a server
    /// starts on the copy as it is. With Postgres, back up with pg_dump
    /// instead (docs/OPERATIONS.md).
    Backup {
        /// The new file (never overwritten).
        file: std::path::PathBuf,
    },
}

/// Where the server listens, and the limits on each connection.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Listening and connections")]
pub struct ListenSettings {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Open connections (HTTP and WebSocket) one replica holds at most; beyond
    /// it a new connection gets `503` at once. Defaults to the process's
    /// file-descriptor limit less a reserve for the database, Redis and logs.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// How long a client may take to send a request's headers (slow clients,
    /// "slowloris", are dropped after it).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// How long a client may take to send a request's body.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub body_read_timeout_secs: u64,

    /// How long a request may take from its head to the last byte of its
    /// answer read by the client; a connection whose answer is not read by
    /// then is dropped (and so is one that sends no whole request within
    /// `HEADER_READ_TIMEOUT_SECS` of connecting, on any protocol).
    #[arg(long, env = "ANSWER_TIMEOUT_SECS", default_value_t = 60)]
    pub answer_timeout_secs: u64,

    /// How long a connection may stay open with no request in flight; HTTP/2
    /// connections are then closed gracefully (HTTP/1 keep-alive connections
    /// wait only `HEADER_READ_TIMEOUT_SECS` for their next request).
    #[arg(long, env = "CONNECTION_IDLE_SECS", default_value_t = 60)]
    pub connection_idle_secs: u64,

    /// HTTP/2 streams (requests) one connection may have open at once.
    #[arg(long, env = "HTTP2_MAX_STREAMS", default_value_t = 32)]
    pub http2_max_streams: u32,

    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Peers whose `X-Forwarded-For` is believed (comma-separated IPs or CIDRs).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub trusted_proxies: Vec<IpNet>,

    /// Browser origins allowed by CORS (comma-separated); `*` allows any.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// WebSockets one user may hold open at once, on all replicas together.
    #[arg(long, env = "MAX_WS_PER_USER", default_value_t = 16)]
    pub max_ws_per_user: u32,

    /// WebSockets one client address may hold open on one replica.
    #[arg(long, env = "MAX_WS_PER_IP", default_value_t = 256)]
    pub max_ws_per_ip: usize,

    /// Frames queued for one WebSocket before the connection counts as too slow and is closed.
    #[arg(long, env = "WS_QUEUE_LEN", default_value_t = 1024)]
    pub ws_queue_len: usize,

    /// Bytes queued for one WebSocket before the connection counts as too slow and is closed.
    #[arg(long, env = "WS_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub ws_queue_bytes: usize,

    /// Idle time after which the server pings a WebSocket; a connection silent for
    /// two intervals is dropped.
    #[arg(long, env = "WS_PING_SECS", default_value_t = 30)]
    pub ws_ping_secs: u64,

    /// How long a WebSocket opened without a token (in the URL or the
    /// `Authorization` header) has to send its `auth` frame.
    #[arg(long, env = "WS_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_auth_timeout_secs: u64,

    /// How long shutdown waits for in-flight requests and WebSockets.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

/// Where durable data, presence and fan-out live.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Storage")]
pub struct StorageSettings {
    /// `sqlite://FILE` (the embedded default) or `postgres://…`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, value_parser = Unquoted(parse_database_url))]
    pub database_url: String,

    /// Store connections kept open.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,

    /// `transaction` when `DATABASE_URL` names a pooler in transaction mode
    /// that keeps no prepared statements (PgBouncer's `pool_mode =
    /// transaction` before 1.21, as Debian 12 ships it): every statement is
    /// then unnamed and runs inside a transaction, so that a server
    /// connection changing hands between transactions breaks nothing. Costs
    /// a parse and two round trips per statement; not needed directly on
    /// Postgres, nor on PgBouncer 1.21 and later with `max_prepared_statements`.
    #[arg(long, env = "DATABASE_POOLER", value_enum, default_value_t = Pooler::None)]
    pub database_pooler: Pooler,

    /// `redis://…` for presence and fan-out shared by replicas,
    /// `redis+sentinel://host:port,host:port/<master-name>` for the master a
    /// Redis Sentinel set names (followed through failovers), or
    /// `redis+cluster://host:port,host:port` for a Redis Cluster (sharded
    /// pub/sub); unset keeps both in process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "secchat")]
    pub redis_prefix: String,

    /// Redis connections kept open for commands (subscriptions use one more).
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 32)]
    pub redis_pool_size: usize,

    /// How events travel between replicas through Redis: `binary` (compact;
    /// read by this release and later ones) or `json` (the only form releases
    /// before it read). Every replica reads both: set `json` while a rolling
    /// upgrade from such a release is under way, then unset it.
    #[arg(long, env = "BUS_ENVELOPE", value_enum, default_value_t = BusEnvelope::Binary)]
    pub bus_envelope: BusEnvelope,
}

/// Tokens, password hashing, and the names of deleted accounts.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Accounts and tokens")]
pub struct AccountSettings {
    /// HS256 signing secret (at least 32 bytes). Unset on SQLite: generated and kept
    /// beside the database file. Required with Postgres.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = Unquoted(parse_secret))]
    pub jwt_secret: Option<SecretString>,

    /// Several signing secrets, each under an id: `id:secret,id:secret`. The
    /// first signs new tokens (its id in their `kid` header); every one listed
    /// is accepted until removed, so the secret can be rotated without
    /// logging anyone out. Instead of JWT_SECRET, which is one secret under
    /// the id `default`.
    #[arg(long, env = "JWT_KEYS", hide_env_values = true, value_parser = Unquoted(SigningKeys::parse), conflicts_with = "jwt_secret")]
    pub jwt_keys: Option<SigningKeys>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 30 * 60)]
    pub token_ttl_secs: u64,

    /// A refresh token lapses after this long unused (each refresh hands out
    /// a new one, valid this long again).
    #[arg(long, env = "REFRESH_IDLE_SECS", default_value_t = 30 * 24 * 60 * 60)]
    pub refresh_idle_secs: u64,

    /// How long a WebSocket stays open after the token it was opened (or last
    /// renewed in-band) with expires. Clients that never renew, such as the
    /// seed's, keep their connection this long.
    #[arg(long, env = "WS_TOKEN_GRACE_SECS", default_value_t = 24 * 60 * 60)]
    pub ws_token_grace_secs: u64,

    /// How long the name of a deleted account stays unavailable to others.
    #[arg(long, env = "DELETED_NAME_RETENTION_SECS", default_value_t = 30 * 24 * 60 * 60)]
    pub deleted_name_retention_secs: u64,

    /// Password hashes computed at once; defaults to half the CPUs (at least one).
    #[arg(long, env = "MAX_CONCURRENT_HASHES")]
    pub max_concurrent_hashes: Option<usize>,

    /// Password hashes waiting for their turn at most; a login or registration
    /// beyond it gets `503` with `Retry-After` at once.
    #[arg(long, env = "MAX_QUEUED_HASHES", default_value_t = 64)]
    pub max_queued_hashes: usize,

    /// Shortest query `GET /users/search/{query}` accepts, in characters.
    #[arg(long, env = "SEARCH_MIN_CHARS", default_value_t = 3)]
    pub search_min_chars: usize,

    /// Refuse new passwords found among the 20,000 most common ones (at
    /// registration and password change; logins are never checked). Turn it
    /// off only for clients that register with such passwords and cannot change.
    #[arg(long, env = "COMMON_PASSWORD_CHECK", value_enum, default_value_t = Switch::On)]
    pub common_password_check: Switch,
}

/// Who is online, and who may see it.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Presence and privacy")]
pub struct PresenceSettings {
    /// Presence lease: a client not heard from for this long is offline.
    #[arg(long, env = "PRESENCE_LEASE_SECS", default_value_t = 120)]
    pub presence_lease_secs: u64,

    /// Who learns a user's presence: its IP address and port, whether it is
    /// online, when it was last seen, and its online/offline notices.
    #[arg(long, env = "ADDRESS_VISIBILITY", value_enum, default_value_t = Visibility::Contacts)]
    pub address_visibility: Visibility,
}

/// Messages: their size, their life in the store, mailboxes and pages.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Delivery")]
pub struct DeliverySettings {
    /// Largest WebSocket frame and largest message content, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Unread offline messages are deleted this long after they were sent.
    #[arg(long, env = "MESSAGE_TTL_SECS", default_value_t = 30 * 24 * 60 * 60)]
    pub message_ttl_secs: u64,

    /// How long a directed message's `client_id` is remembered: the same id
    /// sent again by the same sender within this time is answered with the
    /// first message's `sent` receipt and not delivered twice.
    #[arg(long, env = "DEDUP_WINDOW_SECS", default_value_t = 10 * 60)]
    pub dedup_window_secs: u64,

    /// Bytes of message content one fetch of stored messages hands out at
    /// most (`GET /messages/`, or a push on connect): the rest follows on the
    /// next page. A page holds at least one message.
    #[arg(long, env = "MESSAGE_PAGE_BYTES", default_value_t = 1024 * 1024)]
    pub message_page_bytes: u64,

    /// Unread offline messages one user's mailbox holds at most.
    #[arg(long, env = "MAILBOX_MAX_MESSAGES", default_value_t = 1000)]
    pub mailbox_max_messages: u64,

    /// Bytes of unread offline messages one user's mailbox holds at most.
    #[arg(long, env = "MAILBOX_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub mailbox_max_bytes: u64,

    /// Of those, how many may come from senders the user has not accepted as
    /// contacts (all such senders together).
    #[arg(long, env = "MAILBOX_STRANGER_MESSAGES", default_value_t = 100)]
    pub mailbox_stranger_messages: u64,
}

/// Budgets per client address, user or connection, and login lock-outs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Rate limits")]
pub struct RateSettings {
    /// `on` enforces every rate limit and login lock-out below; `off` turns
    /// them all off, for load generators and outside test suites that sign up
    /// hundreds of users from one address. Connection caps, mailbox quotas and
    /// timeouts stay on either way.
    #[arg(long, env = "RATE_LIMITS", value_enum, default_value_t = Switch::On)]
    pub rate_limits: Switch,

    /// Login attempts from one client address (`COUNT/PERIOD`: the whole count
    /// at once, then one more every PERIOD/COUNT).
    #[arg(long, env = "LOGIN_RATE_PER_IP", default_value = "30/min")]
    pub login_rate_per_ip: Rate,

    /// Token refreshes (`POST /token/refresh`) from one client address.
    #[arg(long, env = "REFRESH_RATE_PER_IP", default_value = "60/min")]
    pub refresh_rate_per_ip: Rate,

    /// Failed logins in a row an account may have before it is locked out.
    #[arg(long, env = "LOGIN_FREE_FAILURES", default_value_t = 5)]
    pub login_free_failures: u32,

    /// The first lock-out, in seconds; each further failure doubles it.
    #[arg(long, env = "LOGIN_LOCKOUT_SECS", default_value_t = 1)]
    pub login_lockout_secs: u64,

    /// The longest lock-out, in seconds.
    #[arg(long, env = "LOGIN_LOCKOUT_MAX_SECS", default_value_t = 15 * 60)]
    pub login_lockout_max_secs: u64,

    /// Registrations from one client address.
    #[arg(long, env = "REGISTER_RATE_PER_IP", default_value = "10/hour")]
    pub register_rate_per_ip: Rate,

    /// User searches by one user.
    #[arg(long, env = "SEARCH_RATE_PER_USER", default_value = "30/min")]
    pub search_rate_per_user: Rate,

    /// Offline messages stored for others by one sender (`POST /messages/`,
    /// and WebSocket messages to users connected nowhere).
    #[arg(long, env = "OFFLINE_RATE_PER_SENDER", default_value = "120/min")]
    pub offline_rate_per_sender: Rate,

    /// Directed and broadcast WebSocket frames on one connection.
    #[arg(long, env = "WS_FRAME_RATE_PER_CONNECTION", default_value = "100/10s")]
    pub ws_frame_rate_per_connection: Rate,

    /// Directed and broadcast WebSocket frames of one user, on all its
    /// connections (on all replicas) together.
    #[arg(long, env = "WS_FRAME_RATE_PER_USER", default_value = "200/10s")]
    pub ws_frame_rate_per_user: Rate,

    /// `GET /messages/` and `POST /messages/ack` requests of one user.
    #[arg(long, env = "INBOX_RATE_PER_USER", default_value = "120/min")]
    pub inbox_rate_per_user: Rate,

    /// Friend requests, acceptances and removals of one user.
    #[arg(long, env = "CONTACT_RATE_PER_USER", default_value = "30/min")]
    pub contact_rate_per_user: Rate,

    /// Heartbeats (`PUT /me/connection-info`) of one user (clients send one
    /// a minute or so).
    #[arg(long, env = "HEARTBEAT_RATE_PER_USER", default_value = "20/min")]
    pub heartbeat_rate_per_user: Rate,

    /// TURN credentials (`GET /me/turn-credentials`) handed to one user.
    #[arg(long, env = "TURN_RATE_PER_USER", default_value = "10/min")]
    pub turn_rate_per_user: Rate,

    /// Public-key changes of one user.
    #[arg(long, env = "KEY_CHANGE_RATE_PER_USER", default_value = "5/hour")]
    pub key_change_rate_per_user: Rate,

    /// Broadcast fan-out of one user: each broadcast costs one unit per
    /// user connected, for every KiB of its text (so 100 users and a line of
    /// text cost 100), and is refused beyond it.
    #[arg(long, env = "BROADCAST_FANOUT_PER_USER", default_value = "20000/min")]
    pub broadcast_fanout_per_user: Rate,

    /// Frames refused in a row (each answered with an error frame) after
    /// which the connection is closed with 1008.
    #[arg(long, env = "WS_REFUSALS_BEFORE_CLOSE", default_value_t = 32)]
    pub ws_refusals_before_close: u32,
}

/// Relay credentials for P2P connections (coturn's REST API).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "TURN")]
pub struct TurnSettings {
    /// The secret shared with a TURN server (coturn's `static-auth-secret`,
    /// its REST API): with it, `GET /me/turn-credentials` hands out
    /// short-lived relay credentials; unset, that route answers 404.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true, value_parser = Unquoted(parse_turn_secret))]
    pub turn_secret: Option<SecretString>,

    /// The TURN and STUN servers clients are told to use (comma-separated
    /// `turn:`, `turns:` or `stun:` URIs).
    #[arg(long, env = "TURN_URIS", value_delimiter = ',', value_parser = parse_turn_uri)]
    pub turn_uris: Vec<String>,

    /// How long TURN credentials stay valid, in seconds. They cannot be
    /// revoked (the TURN server checks them alone), so they outlive a logout
    /// by up to this long: keep it short; clients fetch new ones.
    #[arg(long, env = "TURN_TTL", default_value_t = 3600)]
    pub turn_ttl: u64,
}

impl TurnSettings {
    /// Whether `GET /me/turn-credentials` hands out credentials (the relay's
    /// `authenticated` frame says so to clients).
    pub fn enabled(&self) -> bool {
        self.turn_secret.is_some()
    }
}

/// Metrics and logs.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetrySettings {
    /// Serve `/metrics` on this address (an internal port, such as
    /// `0.0.0.0:9100`) and not on the API's; unset, the API port serves it.
    #[arg(long, env = "METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Text logs on a terminal without colour codes. `NO_COLOR` set to any
    /// non-empty value does the same (<https://no-color.org>); logs written to
    /// a file or a pipe never carry them.
    #[arg(
        long,
        env = "NO_COLOR",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "",
        default_missing_value = "1",
        hide_default_value = true,
        value_parser = parse_no_color
    )]
    pub no_color: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Visibility {
    /// Any signed-in user, as the original server did.
    Open,
    /// Only users the subject has accepted as contacts on its side.
    Contacts,
}

/// What stands between the replicas and Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pooler {
    /// Postgres itself, or a pooler that keeps prepared statements.
    None,
    /// A pooler that hands a server connection to another client after each
    /// transaction and keeps no prepared statements.
    Transaction,
}

/// The form of the events replicas publish to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusEnvelope {
    Binary,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A CIDR (`10.0.0.0/8`), or a plain address, which is a network of one.
fn parse_network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{raw:?} is neither an IP address nor a CIDR network"))
}

/// How a Postgres URL begins; anything else is SQLite (`sqlite:`).
const POSTGRES_SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

/// A value parser whose error says why without quoting the value, as clap's
/// own errors do: for settings that hold a secret or a URL with a password,
/// which would otherwise reach the terminal and the logs of a failed start.
#[derive(Clone)]
struct Unquoted<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Unquoted<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg
            .and_then(|arg| arg.get_long())
            .map_or_else(String::new, |long| format!(" for '--{long}'"));
        let why = match value.to_str() {
            Some(value) => (self.0)(value),
            None => Err("not UTF-8".to_owned()),
        };
        why.map_err(|why| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value{name} (not shown): {why}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

/// A store URL of a kind this server speaks. Anything else, an empty value
/// included, is refused at start: sqlx would take it for a private in-memory
/// database per connection, and the server would fail later and obscurely.
fn parse_database_url(raw: &str) -> Result<String, String> {
    if POSTGRES_SCHEMES
        .iter()
        .chain(&["sqlite:"])
        .any(|scheme| raw.len() > scheme.len() && raw.starts_with(scheme))
    {
        Ok(raw.to_owned())
    } else {
        Err("DATABASE_URL must be sqlite://FILE (the embedded default) or postgres://…".into())
    }
}

fn parse_turn_secret(raw: &str) -> Result<SecretString, String> {
    if raw.is_empty() {
        return Err("TURN_SECRET must not be empty".into());
    }
    Ok(SecretString::from(raw.to_owned()))
}

fn parse_turn_uri(raw: &str) -> Result<String, String> {
    let uri = raw.trim();
    let scheme_ok = ["turn:", "turns:", "stun:"]
        .iter()
        .any(|scheme| uri.len() > scheme.len() && uri.starts_with(scheme));
    if !scheme_ok || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{raw:?} is not a turn:, turns: or stun: URI (such as turn:turn.example.com:3478?transport=udp)"
        ));
    }
    Ok(uri.to_owned())
}

/// `NO_COLOR` means "no colour" whatever its value, unless empty; the flag
/// alone arrives as `1`, its absence as the empty default.
fn parse_no_color(raw: &str) -> Result<bool, String> {
    Ok(!raw.is_empty())
}

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    if raw.len() < SigningKeys::MIN_SECRET_BYTES {
        return Err(format!(
            "JWT_SECRET must be at least {} bytes",
            SigningKeys::MIN_SECRET_BYTES
        ));
    }
    Ok(SecretString::from(raw.to_owned()))
}

/// The documented defaults, whatever the environment holds: what tests and
/// tools start from before setting the fields they care about.
impl Default for Settings {
    fn default() -> Self {
        Self::from_args(std::iter::empty::<&str>()).expect("the defaults parse")
    }
}

impl Settings {
    /// The settings as the binary starts: command-line flags, then the
    /// environment, then the defaults. A variable set to the empty string
    /// counts as unset, so that its default applies: that is what `VAR=` in
    /// an env file, compose's `${VAR:-}` and a harness clearing a variable
    /// mean, and no setting takes the empty string as a value.
    pub fn from_env_and_args() -> Self {
        let command = Self::command().mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.is_empty());
            if empty {
                arg.env(None::<&'static str>)
            } else {
                arg
            }
        });
        Self::from_arg_matches(&command.get_matches()).unwrap_or_else(|err| err.exit())
    }

    /// Settings from these command-line flags alone: the environment is not
    /// read, so a variable set around a test cannot change what it runs.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = args.into_iter().map(Into::into);
        let command = Self::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(
            std::iter::once(std::ffi::OsString::from("secchat")).chain(args),
        )?;
        Self::from_arg_matches(&matches)
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.accounts.token_ttl_secs)
    }

    pub fn presence_lease(&self) -> Duration {
        Duration::from_secs(self.presence.presence_lease_secs.max(1))
    }

    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.listen.ws_ping_secs.max(1))
    }

    pub fn message_ttl(&self) -> Duration {
        Duration::from_secs(self.delivery.message_ttl_secs.max(1))
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.listen.header_read_timeout_secs.max(1))
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.listen.body_read_timeout_secs.max(1))
    }

    pub fn answer_timeout(&self) -> Duration {
        Duration::from_secs(self.listen.answer_timeout_secs.max(1))
    }

    pub fn connection_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.listen.connection_idle_secs.max(1))
    }

    /// [`AccountSettings::max_concurrent_hashes`], or half the CPUs (at least one), so
    /// that a login storm never takes the whole machine.
    pub fn hash_concurrency(&self) -> usize {
        self.accounts.max_concurrent_hashes.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1)
        })
    }

    /// [`ListenSettings::max_connections`], or what the file-descriptor limit leaves.
    pub fn connection_cap(&self) -> usize {
        self.listen.max_connections.unwrap_or_else(|| {
            // SAFETY: getrlimit writes the limit into the struct it is given.
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
                usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
            } else {
                1024
            };
            soft.saturating_sub(FD_RESERVE).max(64)
        })
    }

    pub fn ws_token_grace(&self) -> Duration {
        Duration::from_secs(self.accounts.ws_token_grace_secs)
    }

    pub fn ws_auth_timeout(&self) -> Duration {
        Duration::from_secs(self.listen.ws_auth_timeout_secs.max(1))
    }

    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.delivery.dedup_window_secs.max(1))
    }

    pub fn password_policy(&self) -> crate::domain::PasswordPolicy {
        crate::domain::PasswordPolicy {
            refuse_common: self.accounts.common_password_check == Switch::On,
        }
    }

    pub fn deleted_name_retention(&self) -> Duration {
        Duration::from_secs(self.accounts.deleted_name_retention_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.listen.shutdown_grace_secs)
    }

    pub fn uses_postgres(&self) -> bool {
        POSTGRES_SCHEMES
            .iter()
            .any(|scheme| self.storage.database_url.starts_with(scheme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_names_sqlite_or_postgres() {
        for good in [
            "sqlite://secchat.db",
            "sqlite::memory:",
            "postgres://u@h/db",
            "postgresql://h/db",
        ] {
            let parsed = Settings::from_args(["--database-url", good]).unwrap();
            assert_eq!(parsed.storage.database_url, good);
        }
        for bad in ["", "secchat.db", "mysql://h/db", "sqlite:", "postgres://"] {
            assert!(
                Settings::from_args(["--database-url", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let parsed =
            Settings::from_args(["--trusted-proxies", "127.0.0.1,10.0.0.0/8, ::1"]).unwrap();
        let shown: Vec<String> = parsed
            .listen
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        assert!(Settings::from_args(["--trusted-proxies", "nowhere"]).is_err());
    }

    #[test]
    fn derived_limits_follow_the_machine_unless_set() {
        let defaults = Settings::default();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
        assert_eq!(defaults.connection_cap(), soft.saturating_sub(128).max(64));
        assert!(defaults.hash_concurrency() >= 1);
        let mut set = Settings::default();
        set.listen.max_connections = Some(7);
        set.accounts.max_concurrent_hashes = Some(3);
        assert_eq!((set.connection_cap(), set.hash_concurrency()), (7, 3));
    }
}
