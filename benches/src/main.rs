//! `herald-bench`: Herald's load-testing harness.
//!
//! # Layout
//! Scenarios (each a subcommand):
//! - `idle`: N connections that subscribed, received one message and answered a ping; server
//!   memory per connection.
//! - `fanout`: M subscribers of one group at rate R, against Herald and its peers in one run
//!   (`cluster`: the same through a local cluster).
//! - `storm`: connects per second and handshake latency.
//! - `million`: one million connections against a local cluster.
//! - `history`: what keeping recoverable messages costs: appends to the Redis history store
//!   (round trips, latency, Redis CPU) and memory per retained message, Redis and in-process.
//! - `recovery`: history end to end through a local cluster: recoverable against plain publish
//!   latency and round trips, the edges' position checks at many streams, a wave of resumes.
//!
//! What they share, each module using only those listed before it:
//! - `proc_stats`: what the harness reads of a process from `/proc` (RSS, CPU, writes).
//! - `payload`: the payload carrying its send time.
//! - `tls`: `wss` runs: a test CA and certificate, Herald's `wss` listener, the clients' trust.
//! - `client`: the one WebSocket client (lean, TLS or not) with a codec per protocol: herald.v1,
//!   MQTT 3.1.1, NATS, plain frames.
//! - `workers`: worker processes holding the client ends, split by the open-file limit; the
//!   parent merges their counters and histograms.
//! - `servers`: the servers under test (Herald and its cluster through `herald-sandbox`, the
//!   tokio-tungstenite baseline, the peers) and their publishers.
//! - `report`: the `fanout` results in JSON, Markdown and SVG.
#![deny(rust_2018_idioms)]

mod client;
mod fanout;
mod history;
mod idle;
mod million;
mod payload;
mod proc_stats;
mod recovery;
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
    /// The history store: append cost on Redis and memory per retained message.
    History(history::HistoryOpts),
    /// History end to end through a local cluster: publish cost recoverable vs plain, position
    /// checks at many streams, resume of many clients.
    Recovery(recovery::RecoveryOpts),
    /// A client-end worker of `million` (started by it).
    #[command(hide = true)]
    MillionWorker(million::WorkerOpts),
    /// Run the bare tokio-tungstenite baseline server (used by `idle --server baseline`).
    BaselineServer(servers::baseline::BaselineOpts),
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
                o.servers = vec![servers::ServerKind::Cluster];
                fanout::run(o).await.map(|_| ())
            }
            Scenario::Storm(o) => storm::run(o).await,
            Scenario::Million(o) => million::run(o).await,
            Scenario::History(o) => history::run(o).await,
            Scenario::Recovery(o) => recovery::run(o).await,
            Scenario::MillionWorker(o) => million::worker(o).await,
            Scenario::BaselineServer(o) => servers::baseline::baseline(o).await,
            Scenario::Pki(o) => tls::pki(o),
            Scenario::Worker => workers::worker_main().await,
        }
    })
}
