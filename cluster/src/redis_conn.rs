//! One Redis connection for the cluster backends, single Redis or Redis Cluster, built the same
//! way for the registry and the history store: multiplexed, reconnecting, with the call deadline
//! as connect and response timeout; and the health both keep of it ([`Health`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

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

/// How long callers fail fast after a failed call before one of them tries Redis again.
const PROBE_AFTER: Duration = Duration::from_millis(200);

/// What a backend's health is called in the log, metrics and readiness.
pub(crate) struct HealthNames {
    /// Prefix of the readiness text and subject of the log lines (`redis`, `redis history`).
    pub label: &'static str,
    /// Gauge: 1 while reachable.
    pub up: &'static str,
    /// Counter of failed calls.
    pub errors: &'static str,
    /// Counter of round trips.
    pub trips: &'static str,
}

/// The health of one Redis backend: reachable or not, the last error and the round trips, for
/// readiness, metrics and the log, and a breaker: while Redis is known down, calls fail at once,
/// and one call every [`PROBE_AFTER`] tries it again, so a publish never waits for a reconnect
/// to a Redis that is not there.
pub(crate) struct Health {
    names: HealthNames,
    healthy: AtomicBool,
    last_error: Mutex<String>,
    round_trips: AtomicU64,
    /// While unhealthy: when the next call may try Redis.
    probe_at: Mutex<Instant>,
}

impl Health {
    pub(crate) fn new(names: HealthNames) -> Self {
        Self {
            names,
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(String::new()),
            round_trips: AtomicU64::new(0),
            probe_at: Mutex::new(Instant::now()),
        }
    }

    /// Before a call: `Err(last error)` while Redis is known down and no probe is due; the
    /// caller then fails at once. A due probe goes through, and the next is pushed back.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut at = self.probe_at.lock();
        let now = Instant::now();
        if now < *at {
            return Err(format!("{} (retrying)", self.last_error.lock()));
        }
        *at = now + PROBE_AFTER;
        Ok(())
    }

    /// Records a call that Redis answered.
    pub(crate) fn ok(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("{} reachable again", self.names.label);
            metrics::gauge!(self.names.up).set(1.0);
        }
    }

    /// Records a failed call; returns its message.
    pub(crate) fn failed(&self, msg: String) -> String {
        *self.probe_at.lock() = Instant::now() + PROBE_AFTER;
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %msg, "{} unreachable; degraded", self.names.label);
            metrics::gauge!(self.names.up).set(0.0);
        }
        metrics::counter!(self.names.errors).increment(1);
        *self.last_error.lock() = msg.clone();
        msg
    }

    /// Counts a round trip.
    pub(crate) fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(self.names.trips).increment(1);
    }

    /// Round trips so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Why the backend is degraded, or `None`.
    pub(crate) fn degraded(&self) -> Option<String> {
        if self.healthy.load(Ordering::Relaxed) {
            None
        } else {
            Some(format!("{}: {}", self.names.label, self.last_error.lock()))
        }
    }
}
