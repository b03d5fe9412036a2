//! secchat's load generator: sets up its own users through the public API, runs
//! one scenario against one or several base URLs (replicas), and prints one
//! JSON line of results. Setup time is reported apart and never counted.
//!
//!   loadgen ws-direct --url http://127.0.0.1:8000 --connections 1000 --server-pid $(pidof secchat)
//!
//! Figures are floors: on a small machine the generator shares the cores.

mod api;
mod http;
mod measure;
mod soak;
mod ws;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load scenarios for secchat")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Base URL of a replica; repeat for several (clients are spread round-robin).
    #[arg(long = "url", global = true, default_value = "http://127.0.0.1:8000")]
    pub urls: Vec<String>,
    /// Processes whose CPU time (and, for conn-capacity, memory) is measured:
    /// the server replicas.
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,
    /// Redis processes (every node of a cluster), measured apart from the
    /// replicas: in all and each on its own.
    #[arg(long = "redis-pid", global = true)]
    pub redis_pids: Vec<u32>,
    /// Length of the measured window, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Threads of the generator's runtime; fewer leave more of a small machine
    /// to the server (latency runs), more push harder (throughput runs).
    #[arg(long, global = true, default_value_t = 2)]
    pub threads: usize,
    /// Prefix of the users this run creates (runs against one database need
    /// different prefixes).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// A file of the users earlier runs registered against these servers
    /// (with the same prefix), reused rather than registered again; the users
    /// this run registers are added to it. Runs in one sitting then pay for
    /// each user's two password hashes once (`benches/run.sh` does so).
    #[arg(long, global = true)]
    pub accounts: Option<std::path::PathBuf>,
}

impl Common {
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("lg{}", std::process::id()))
    }

    /// The base URL for the `i`-th client.
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Connections in pairs sending directed JSON frames to each other.
    WsDirect(ws::DirectArgs),
    /// One sender's text broadcast to every other connection.
    WsBroadcast(ws::BroadcastArgs),
    /// Idle connections, and the server's resident memory per connection.
    ConnCapacity(ws::CapacityArgs),
    /// `GET /me/contacts/online` for a user with many contacts, half online.
    HttpOnline(http::OnlineArgs),
    /// `POST /messages/` throughput, then the exactly-once drain by `GET /messages/`.
    HttpOffline(http::OfflineArgs),
    /// Logins at full speed while a probe measures `GET /me/contacts/online`.
    LoginStorm(http::StormArgs),
    /// Clients connecting, sending and leaving at random, some abusive; fails
    /// unless every accepted message arrived exactly once, every abuse was
    /// refused, and the server's memory came back near its baseline.
    Soak(soak::SoakArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = cli.common;
    let result = match cli.scenario {
        Scenario::WsDirect(args) => ws::direct(&common, args).await?,
        Scenario::WsBroadcast(args) => ws::broadcast(&common, args).await?,
        Scenario::ConnCapacity(args) => ws::capacity(&common, args).await?,
        Scenario::HttpOnline(args) => http::online(&common, args).await?,
        Scenario::HttpOffline(args) => http::offline(&common, args).await?,
        Scenario::LoginStorm(args) => http::storm(&common, args).await?,
        Scenario::Soak(args) => soak::soak(&common, args).await?,
    };
    println!("{result}");
    Ok(())
}
