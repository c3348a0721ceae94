//! The bus over NATS. Subjects (see `docs/cluster.md`):
//! - `<prefix>.edge.<edge id>`: envelopes for the local recipients of one edge;
//! - `<prefix>.bcast.<project>`: broadcasts, which every edge receives through one wildcard
//!   subscription `<prefix>.bcast.*`;
//! - `<prefix>.ctl`: operator calls; every edge answers on the request's reply inbox.
//!
//! Ids are validated to alphabets without `.`, `*`, `>` or whitespace, so an id is always exactly
//! one subject token and never a wildcard. Envelopes travel as protobuf. Operator calls use a
//! connection of their own, so they never queue behind message delivery.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use herald_core::backoff::backoff;
use herald_core::bus::{
    Bus, BusError, ControlOutcome, ControlReply, ControlRequest, Destination, EdgeHandler,
};
use herald_core::ids::EdgeId;
use herald_core::proto::bus as wire;
use herald_core::proto::bus::Envelope;
use herald_core::proto::prost::Message as _;
use herald_core::telemetry::{BUS_CALL_SECONDS, Call};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::ClusterError;

/// Settings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`); several name a NATS cluster, and the client also learns
    /// the cluster's other members from the server.
    pub urls: Vec<String>,
    /// First token of every subject (`[a-z0-9_-]`).
    pub subject_prefix: String,
    /// A name for this client, shown by the server (e.g. the node's id).
    pub name: String,
    /// Deadline of one publish while NATS is unreachable (messages wait in a bounded buffer
    /// meanwhile).
    pub publish_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".into()],
            subject_prefix: "herald".into(),
            name: "herald".into(),
            publish_timeout: Duration::from_secs(2),
        }
    }
}

/// Whether a connection is up, for readiness.
struct Link {
    what: &'static str,
    up: AtomicBool,
}

impl Link {
    fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            metrics::gauge!("herald_bus_up", "connection" => self.what).set(if up {
                1.0
            } else {
                0.0
            });
            if up {
                tracing::info!(connection = self.what, "nats connected");
            } else {
                tracing::warn!(connection = self.what, "nats disconnected; bus degraded");
            }
        }
    }
}

/// The bus over NATS.
pub struct NatsBus {
    data: Client,
    control: Client,
    prefix: String,
    publish_timeout: Duration,
    links: [Arc<Link>; 2],
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

async fn connect(
    cfg: &NatsConfig,
    role: &'static str,
) -> Result<(Client, Arc<Link>), ClusterError> {
    let link = Arc::new(Link {
        what: role,
        up: AtomicBool::new(false),
    });
    let events = link.clone();
    let client = ConnectOptions::new()
        .name(format!("{}-{role}", cfg.name))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(|attempt| {
            if attempt <= 1 {
                return Duration::ZERO;
            }
            backoff(
                attempt.saturating_sub(1) as u32,
                Duration::from_millis(100),
                Duration::from_secs(5),
            )
        })
        .event_callback(move |event| {
            let link = events.clone();
            async move {
                match event {
                    Event::Connected => link.set(true),
                    Event::Disconnected | Event::Closed => link.set(false),
                    Event::SlowConsumer(_) => {
                        metrics::counter!("herald_bus_slow_consumer_total").increment(1);
                    }
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        })
        .connect(cfg.urls.clone())
        .await
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
    Ok((client, link))
}

impl NatsBus {
    /// Connects (in the background: a NATS that is down at start is retried with backoff).
    pub async fn connect(cfg: &NatsConfig) -> Result<Self, ClusterError> {
        if cfg.urls.is_empty() {
            return Err(ClusterError::Nats("no URL".into()));
        }
        if herald_core::ids::EdgeId::validate(&cfg.subject_prefix).is_err() {
            return Err(ClusterError::Nats(
                "subject prefix must be [a-z0-9_-]{1,64}".into(),
            ));
        }
        let (data, data_link) = connect(cfg, "data").await?;
        let (control, control_link) = connect(cfg, "control").await?;
        Ok(Self {
            data,
            control,
            prefix: cfg.subject_prefix.clone(),
            publish_timeout: cfg.publish_timeout,
            links: [data_link, control_link],
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn edge_subject(&self, edge: &EdgeId) -> String {
        format!("{}.edge.{edge}", self.prefix)
    }

    fn control_subject(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    fn unavailable(e: impl std::fmt::Display) -> BusError {
        BusError::Unavailable(format!("nats: {e}"))
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// Decodes envelopes from a subscription and hands them to the edge.
async fn deliver_loop(mut sub: async_nats::Subscriber, handler: Arc<dyn EdgeHandler>) {
    while let Some(msg) = sub.next().await {
        match Envelope::decode(msg.payload) {
            Ok(env) => handler.deliver(&env),
            Err(e) => {
                metrics::counter!("herald_edge_envelopes_dropped_total", "reason" => "decode")
                    .increment(1);
                tracing::warn!(error = %e, subject = %msg.subject, "undecodable envelope dropped");
            }
        }
    }
}

/// Answers operator calls about this edge's connections.
async fn control_loop(
    mut sub: async_nats::Subscriber,
    client: Client,
    edge: EdgeId,
    handler: Arc<dyn EdgeHandler>,
) {
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply else {
            continue;
        };
        let request = wire::ControlRequest::decode(msg.payload)
            .map_err(|e| e.to_string())
            .and_then(|r| ControlRequest::try_from(r).map_err(|e| e.to_string()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "operator call refused");
                continue;
            }
        };
        let reply = handler.control_async(&request).await.to_wire(&edge);
        if let Err(e) = client
            .publish(reply_to, Bytes::from(reply.encode_to_vec()))
            .await
        {
            tracing::warn!(error = %e, "operator reply not sent");
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, to: Destination<'_>, envelope: &Envelope) -> Result<(), BusError> {
        let _call = Call::start(BUS_CALL_SECONDS, "publish", "herald.bus.publish");
        let subject = match to {
            Destination::Edge(edge) => self.edge_subject(edge),
            Destination::Broadcast(project) => format!("{}.bcast.{project}", self.prefix),
        };
        let payload = Bytes::from(envelope.encode_to_vec());
        match tokio::time::timeout(self.publish_timeout, self.data.publish(subject, payload)).await
        {
            Ok(r) => r.map_err(Self::unavailable),
            Err(_) => Err(Self::unavailable("publish timed out")),
        }
    }

    async fn attach(&self, edge: EdgeId, handler: Arc<dyn EdgeHandler>) -> Result<(), BusError> {
        let own = self
            .data
            .subscribe(self.edge_subject(&edge))
            .await
            .map_err(Self::unavailable)?;
        let bcast = self
            .data
            .subscribe(format!("{}.bcast.*", self.prefix))
            .await
            .map_err(Self::unavailable)?;
        let ctl = self
            .control
            .subscribe(self.control_subject())
            .await
            .map_err(Self::unavailable)?;
        // The server holds the subscriptions before the edge accepts its first client (when
        // NATS is up; otherwise they are sent on connection and the edge starts degraded).
        for client in [&self.data, &self.control] {
            if tokio::time::timeout(self.publish_timeout, client.flush())
                .await
                .is_err()
            {
                tracing::warn!("nats unreachable while subscribing; continuing degraded");
            }
        }
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(deliver_loop(own, handler.clone())));
        tasks.push(tokio::spawn(deliver_loop(bcast, handler.clone())));
        tasks.push(tokio::spawn(control_loop(
            ctl,
            self.control.clone(),
            edge,
            handler,
        )));
        Ok(())
    }

    async fn control(
        &self,
        request: &ControlRequest,
        live: &[EdgeId],
        deadline: Duration,
    ) -> Result<ControlOutcome, BusError> {
        let _call = Call::start(BUS_CALL_SECONDS, "control", "herald.bus.control");
        let inbox = self.control.new_inbox();
        let mut replies_sub = self
            .control
            .subscribe(inbox.clone())
            .await
            .map_err(Self::unavailable)?;
        let payload = Bytes::from(wire::ControlRequest::from(request).encode_to_vec());
        self.control
            .publish_with_reply(self.control_subject(), inbox, payload)
            .await
            .map_err(Self::unavailable)?;
        let mut waiting: HashSet<&EdgeId> = live.iter().collect();
        let mut replies = Vec::new();
        let mut seen = HashSet::new();
        let until = tokio::time::Instant::now() + deadline;
        while !waiting.is_empty() || live.is_empty() {
            let next = tokio::time::timeout_at(until, replies_sub.next()).await;
            let Ok(Some(msg)) = next else {
                break;
            };
            let decoded = wire::ControlReply::decode(msg.payload)
                .map_err(|e| e.to_string())
                .and_then(|r| ControlReply::from_wire(r).map_err(|e| e.to_string()));
            match decoded {
                Ok((edge, reply)) => {
                    if seen.insert(edge.clone()) {
                        waiting.remove(&edge);
                        replies.push((edge, reply));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "undecodable operator reply"),
            }
        }
        let _ = replies_sub.unsubscribe().await;
        let mut missing: Vec<EdgeId> = waiting.into_iter().cloned().collect();
        missing.sort();
        if !missing.is_empty() {
            metrics::counter!("herald_bus_control_missing_total").increment(missing.len() as u64);
        }
        Ok(ControlOutcome { replies, missing })
    }

    fn degraded(&self) -> Option<String> {
        let down: Vec<&str> = self
            .links
            .iter()
            .filter(|l| !l.up.load(Ordering::Relaxed))
            .map(|l| l.what)
            .collect();
        if down.is_empty() {
            None
        } else {
            Some(format!("nats: {} connection down", down.join(" and ")))
        }
    }
}
