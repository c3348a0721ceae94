//! Real processes on loopback for Herald's end-to-end tests (`tests/`) and its load-testing
//! harness (`benches/`): one way to find a server binary, pick a port, start `redis-server`
//! (single or a Redis Cluster), `nats-server` (single or a cluster), and `herald serve` nodes, and
//! to stop them all.
//!
//! ```ignore
//! let backends = Backends::builder().nats_nodes(1).start().await?;
//! let cfg = dir.join("herald.toml");
//! std::fs::write(&cfg, format!("{base}\n[cluster]\n{}", backends.cluster_toml()))?;
//! let edge = Node::builder(herald_bin(None)?, &cfg).name("e1").args(["--role", "edge"])
//!     .env("HERALD_EDGE__ID", "e1").start().await?;
//! println!("edge ws at {:?}", edge.ready.ws);
//! ```
//!
//! # Layout
//! - [`bin`]: finding `herald`, `redis-server`, `nats-server` (a missing one is an error naming
//!   its Debian package).
//! - [`port`]: free loopback ports above the ephemeral range, and whether a process listens.
//! - [`process`]: a started process: killed when dropped; stopped gracefully in groups.
//! - [`redis`], [`nats`]: the backends, one server or a cluster of them.
//! - [`backends`]: Redis and NATS together, with the `[cluster]` settings that point at them.
//! - [`node`]: one `herald serve` process, ready when it printed `herald ready`.
//! - [`cluster`]: backends, a router and N edges in one call (the harness's clusters).
//!
//! Every wait has a deadline; every process is killed when its handle is dropped.
#![deny(rust_2018_idioms)]

pub mod backends;
pub mod bin;
pub mod cluster;
pub mod nats;
pub mod node;
pub mod port;
pub mod process;
pub mod redis;

pub use backends::{Backends, BackendsBuilder};
pub use bin::{herald_bin, server_bin};
pub use cluster::{Cluster, ClusterBuilder};
pub use nats::NatsServer;
pub use node::{Node, NodeBuilder, Ready};
pub use port::free_port;
pub use process::{Process, Stderr, stop_all};
pub use redis::RedisServer;

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong while starting or stopping sandbox processes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server binary is not installed.
    #[error(
        "{name} not found in PATH, /usr/bin, /usr/sbin or /usr/local/bin \
         (Debian: apt-get install {package}; .ci/run installs it)"
    )]
    Missing {
        /// The binary looked for.
        name: String,
        /// The Debian package that has it.
        package: String,
    },
    /// The `herald` binary is not built.
    #[error(
        "herald binary not found at {0}: build it with `cargo build [--release] -p herald`, \
         or set HERALD_BIN"
    )]
    NoHerald(PathBuf),
    /// A process could not be started.
    #[error("start {what}: {source}")]
    Spawn {
        /// The process.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A process exited before it was ready.
    #[error("{what} exited before it was ready{detail}")]
    Exited {
        /// The process.
        what: String,
        /// Where to look (its log), or what it said.
        detail: String,
    },
    /// A process was not ready in time.
    #[error("{what} not ready within {:.0} s", .within.as_secs_f64())]
    NotReady {
        /// What was awaited.
        what: String,
        /// The deadline.
        within: Duration,
    },
    /// No port of 61000-65000 is free.
    #[error("no free loopback port in 61000-65000")]
    NoFreePort,
    /// A backend did not come together (a Redis Cluster, NATS routes).
    #[error("{0}")]
    Setup(String),
    /// `herald ready` line without an address it should carry.
    #[error("ready line {line:?}: {detail}")]
    ReadyLine {
        /// The line.
        line: String,
        /// What is wrong with it.
        detail: String,
    },
    /// File or process I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// The result of sandbox operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
