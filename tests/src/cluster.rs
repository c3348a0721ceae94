//! The cluster sandbox: real `redis-server` (single or a 3-master Redis Cluster) and a 3-node
//! `nats-server` cluster on free loopback ports, and Herald nodes wired to them. The processes
//! are started by `herald-sandbox`, which the harness (`benches/`) uses too; this module gives
//! tests its panicking, deadline-bound form.
//!
//! ```ignore
//! let backends = Backends::start().await;
//! let e1 = herald().clustered(&backends).role("edge").edge("id", "e1").start().await;
//! let r1 = herald().clustered(&backends).role("router").start().await;
//! ```
//!
//! A missing `redis-server`, `redis-cli` or `nats-server` fails the test with a message naming
//! it; nothing is ever skipped.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

pub use herald_sandbox::{NatsServer, RedisServer};

use crate::{HeraldBuilder, WAIT};

/// Finds a server binary in `PATH` or the usual Debian places; fails naming its package.
pub fn server_bin(name: &str) -> PathBuf {
    herald_sandbox::server_bin(name).unwrap_or_else(|e| panic!("{e}: the cluster tests need it"))
}

/// A free loopback port above the ephemeral range (61000-65000), so a kernel-chosen client port
/// cannot take it between the check and the server's bind.
pub fn free_port() -> u16 {
    herald_sandbox::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Redis (single or Cluster) and NATS servers, for as long as the test holds them. Dereferences
/// to the sandbox's [`herald_sandbox::Backends`]: `b.redis[0].kill().await`, `b.nats_urls()`.
pub struct Backends(herald_sandbox::Backends);

impl Backends {
    /// A single Redis and a 3-node NATS cluster.
    pub async fn start() -> Self {
        Self::start_with(false, 3).await
    }

    /// Redis (`redis_cluster`: a 3-master Redis Cluster) and `nats_nodes` NATS servers
    /// (0 for none), each wait bounded by [`WAIT`].
    pub async fn start_with(redis_cluster: bool, nats_nodes: usize) -> Self {
        let b = herald_sandbox::Backends::builder()
            .redis_cluster(redis_cluster)
            .nats_nodes(nats_nodes)
            .wait(WAIT)
            .start()
            .await
            .unwrap_or_else(|e| panic!("cluster backends: {e}"));
        Self(b)
    }

    /// A lone Redis started with more `redis-server` arguments (e.g. `--appendonly yes`, which
    /// replace the sandbox's no-persistence defaults), and no NATS.
    pub async fn redis_with(args: &[&str]) -> Self {
        let b = herald_sandbox::Backends::builder()
            .nats_nodes(0)
            .redis_args(args.iter().copied())
            .wait(WAIT)
            .start()
            .await
            .unwrap_or_else(|e| panic!("redis backend: {e}"));
        Self(b)
    }
}

impl Deref for Backends {
    type Target = herald_sandbox::Backends;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Backends {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl HeraldBuilder {
    /// Makes this node part of a cluster over `backends` (edge TTL 3 s unless set otherwise).
    pub fn clustered(mut self, backends: &Backends) -> Self {
        let c = self.section("cluster");
        c.insert("registry".into(), "redis".into());
        c.insert("bus".into(), "nats".into());
        c.insert(
            "redis_urls".into(),
            toml::Value::Array(backends.redis_urls().into_iter().map(Into::into).collect()),
        );
        c.insert("redis_cluster".into(), backends.redis_cluster.into());
        c.insert(
            "nats_urls".into(),
            toml::Value::Array(backends.nats_urls().into_iter().map(Into::into).collect()),
        );
        c.insert("prefix".into(), backends.prefix.clone().into());
        c.insert("redis_timeout_ms".into(), 1_000.into());
        c.entry("edge_ttl_secs").or_insert(3.into());
        self
    }

    /// Sets `[cluster] key = value`.
    pub fn cluster(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section("cluster").insert(key.into(), value.into());
        self
    }

    /// Sets what the node runs: `edge`, `router` or `all`.
    pub fn role(self, role: &str) -> Self {
        self.cluster("role", role)
    }
}
