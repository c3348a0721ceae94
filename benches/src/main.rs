//! `herald-bench`: Herald's load-testing harness.
//!
//! # Layout
//! - `proc_stats`: what the harness reads of a server process from `/proc` (RSS, CPU, writes).
//! - `servers`: starting the server under test (Herald, or a bare tokio-tungstenite baseline).
//! - `idle`: the `idle` scenario: N connections that subscribed, received one message and
//!   answered a ping; server memory per connection.
#![deny(rust_2018_idioms)]

mod idle;
mod proc_stats;
mod servers;

use clap::{Parser, Subcommand};

/// Herald's load-testing harness.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Idle connections: server RSS per connection.
    Idle(idle::IdleOpts),
    /// Run the bare tokio-tungstenite baseline server (used by `idle --server baseline`).
    BaselineServer(servers::BaselineOpts),
}

fn main() -> anyhow::Result<()> {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.scenario {
            Scenario::Idle(o) => idle::run(o).await,
            Scenario::BaselineServer(o) => servers::baseline(o).await,
        }
    })
}
