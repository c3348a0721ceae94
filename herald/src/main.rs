//! `herald`: the server (a single node with edge and router in one process and the in-process
//! registry and bus, or one node of a cluster over Redis and NATS running the edge, the router or
//! both) and the operator CLI that talks to any router over gRPC.
#![deny(rust_2018_idioms)]

mod admin;
mod admin_cli;
mod cli;
mod config;
mod logs;
mod serve;
mod state;
mod telemetry;

use clap::Parser as _;

/// jemalloc keeps the many small per-connection allocations compact: 1.87 KiB per idle
/// connection against 2.21 KiB with glibc's malloc (benches/README.md). The `system-alloc`
/// feature leaves it out for heap profiles.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // One crypto provider for the whole process, chosen explicitly.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            cli::Command::Serve(opts) => serve::run(opts).await,
            cli::Command::Dev(mut opts) => {
                opts.dev = true;
                serve::run(opts).await
            }
            other => cli::run(other).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            match e.downcast_ref::<config::ConfigErrors>() {
                Some(_) => std::process::ExitCode::from(64),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}
