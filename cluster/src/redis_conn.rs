//! One Redis connection for the cluster backends, single Redis or Redis Cluster, built the same
//! way for the registry and the history store: multiplexed, reconnecting, with the call deadline
//! as connect and response timeout.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::ClusterError;
use crate::redis_registry::RedisConfig;

/// One connection kind or the other, both multiplexed, reconnecting and cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Checks the settings and builds the connection; connects lazily (a Redis that is down at
    /// start is retried). Must be called inside a tokio runtime.
    pub(crate) fn new(cfg: &RedisConfig) -> Result<Self, ClusterError> {
        if cfg.key_prefix.is_empty() || cfg.key_prefix.contains(['{', '}']) {
            return Err(ClusterError::Redis(
                "key prefix must be non-empty and hold no '{' or '}'".into(),
            ));
        }
        if cfg.urls.is_empty() {
            return Err(ClusterError::Redis("no URL".into()));
        }
        if cfg.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(cfg.urls.clone())
                .connection_timeout(cfg.timeout)
                .response_timeout(cfg.timeout)
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(1_000)
                .build()
                .map_err(|e| ClusterError::Redis(e.to_string()))?;
            Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(cfg.timeout)
                        .set_response_timeout(cfg.timeout),
                ),
            ))
        } else {
            if cfg.urls.len() != 1 {
                return Err(ClusterError::Redis(
                    "a single Redis takes exactly one URL (set cluster for several)".into(),
                ));
            }
            let client = redis::Client::open(cfg.urls[0].as_str())
                .map_err(|e| ClusterError::Redis(e.to_string()))?;
            // The manager reconnects with jittered exponential backoff; it gives up after a
            // few tries, and the next call starts over, so callers' own backoff paces it.
            let manager_cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.timeout))
                .set_response_timeout(Some(cfg.timeout))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(2);
            Ok(Conn::Single(
                ConnectionManager::new_lazy_with_config(client, manager_cfg)
                    .map_err(|e| ClusterError::Redis(e.to_string()))?,
            ))
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
