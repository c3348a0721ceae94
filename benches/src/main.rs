//! `herald-bench`: Herald's load-testing harness.
//!
//! # Layout
//! - `proc_stats`: what the harness reads of a server process from `/proc` (RSS, CPU, writes).
//! - `servers`: starting the server under test (Herald, or a bare tokio-tungstenite baseline).
//! - `idle`: the `idle` scenario: N connections that subscribed, received one message and
//!   answered a ping; server memory per connection.
//! - `fanout`: M subscribers of one group at rate R, against Herald and its peers in one run.
//! - `clients`: subscribers of every protocol (herald.v1, MQTT over ws, NATS over ws, plain ws).
//! - `peers`: starting mosquitto, nats-server and a Node `ws` server.
//! - `report`: JSON, Markdown and SVG results.
//! - `storm`: connects per second and handshake latency.
//! - `tls`: `wss` runs: a test CA and certificate, Herald's `wss` listener, the clients' trust.
//! - `workers`: worker processes holding the client ends, split by the open-file limit; the
//!   parent merges their counters and histograms.
//! - `million`: one million connections against a local cluster.
#![deny(rust_2018_idioms)]

mod clients;
mod fanout;
mod idle;
mod million;
mod peers;
mod proc_stats;
mod report;
mod servers;
mod storm;
mod tls;
mod workers;

use clap::{Parser, Subcommand};

/// Herald's load-testing harness.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
struct Args {
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// At most this many connections per worker process (default: the open-file limit less
    /// 256).
    #[arg(long, global = true)]
    per_worker: Option<u64>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Idle connections: server RSS per connection.
    Idle(idle::IdleOpts),
    /// Broadcast fan-out to one group (or `--unicast`): latency, throughput, CPU and writes per
    /// delivery.
    Fanout(fanout::FanoutOpts),
    /// The fanout scenario (or `--unicast`) through a cluster: two edges, a router,
    /// redis-server and nats-server (same as `fanout --servers cluster`).
    Cluster(fanout::FanoutOpts),
    /// Connects per second and handshake latency.
    Storm(storm::StormOpts),
    /// One million connections against a local cluster (edges, router, Redis, NATS).
    Million(million::MillionOpts),
    /// A client-end worker of `million` (started by it).
    #[command(hide = true)]
    MillionWorker(million::WorkerOpts),
    /// Run the bare tokio-tungstenite baseline server (used by `idle --server baseline`).
    BaselineServer(servers::BaselineOpts),
    /// Write a test CA (`ca.pem`) and a server certificate and key signed by it
    /// (`server.pem`, `server.key`) for `--ca`, `--cert`, `--key`.
    Pki(tls::PkiOpts),
    /// A worker process holding client ends (started by the harness; JSON lines on stdio).
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    workers::configure(args.quiet, args.per_worker);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.scenario {
            Scenario::Idle(o) => idle::run(o).await,
            Scenario::Fanout(o) => fanout::run(o).await.map(|_| ()),
            Scenario::Cluster(mut o) => {
                o.servers = vec![fanout::ServerKind::Cluster];
                fanout::run(o).await.map(|_| ())
            }
            Scenario::Storm(o) => storm::run(o).await,
            Scenario::Million(o) => million::run(o).await,
            Scenario::MillionWorker(o) => million::worker(o).await,
            Scenario::BaselineServer(o) => servers::baseline(o).await,
            Scenario::Pki(o) => tls::pki(o),
            Scenario::Worker => workers::worker_main().await,
        }
    })
}
