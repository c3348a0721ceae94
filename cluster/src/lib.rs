//! Herald's cluster backends: the same [`Registry`](herald_core::registry::Registry),
//! [`Bus`](herald_core::bus::Bus) and [`History`](herald_core::history::History) seams as the
//! in-process ones, backed by Redis and NATS, so that many edges and routers share one fabric.
//! The key and subject layout is in `docs/cluster.md`.
//!
//! # Layout
//! - [`redis_registry`]: [`RedisRegistry`], per-(key, edge) interest entries, edge liveness with
//!   a TTL, cleanup of dead edges, cluster-wide idempotency keys; single Redis or Redis Cluster.
//! - [`redis_history`]: [`RedisHistory`], recoverable streams as Redis streams with a meta hash
//!   per stream, one script per append; single Redis or Redis Cluster.
//! - [`redis_projects`]: [`RedisProjects`], the admin API's projects shared by every node (one
//!   document, a version, compare-and-set).
//! - `redis_conn`: the one way both connect (single or Cluster, deadlines, reconnection).
//! - [`nats_bus`]: [`NatsBus`], one subject per edge, one broadcast subject per project, operator
//!   calls by request/reply to every edge.
#![deny(rust_2018_idioms)]

pub mod nats_bus;
mod redis_conn;
pub mod redis_history;
pub mod redis_projects;
pub mod redis_registry;
mod redis_sessions;

pub use nats_bus::{NatsBus, NatsConfig};
pub use redis_history::RedisHistory;
pub use redis_projects::RedisProjects;
pub use redis_registry::{RedisConfig, RedisRegistry};

/// What can stop a cluster backend from being built (bad settings; never a network failure,
/// which is retried at run time).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A Redis URL or setting is invalid.
    #[error("redis: {0}")]
    Redis(String),
    /// A NATS URL or setting is invalid.
    #[error("nats: {0}")]
    Nats(String),
}
