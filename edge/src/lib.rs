//! Herald's edge node: accepts WebSocket clients, authenticates them, keeps their subscriptions
//! and writes delivered messages to their sockets.
//!
//! # Layout
//! - [`config`]: the edge's settings.
//! - [`handshake`]: the HTTP upgrade (sub-protocol, project, token, `permessage-deflate` offer);
//!   [`deflate`]: the extension itself (server messages compressed once, client ones inflated).
//! - [`auth`]: JWT verification with each project's keys; [`jwks`]: keys fetched from JWK Set URLs.
//! - [`protocol`]: the native `herald.v1` frames; [`frame`]: pre-framed server frames.
//! - [`hub`]: the sharded hub holding every connection's state and queue; local fan-out.
//! - [`interest`]: this edge's interest, mirrored into the registry in ordered batches.
//! - [`local`]: the registry of a single-node Herald, answered by the hub itself.
//! - [`listener`]: listener settings, the client address, plain or TLS streams;
//!   [`tls`]: rustls, client certificates, reloads; `tls_stream`: a TLS connection over rustls's
//!   unbuffered API, whose buffers the edge owns and frees when idle; [`proxy`]: PROXY
//!   protocol, forwarded headers.
//! - `admission`: PROXY, TLS, the upgrade, the defences and authentication, for every protocol;
//!   `session`: the one task per connection, its live session and what codecs may do to it;
//!   [`transport`]: how a session's bytes travel (`ws`: WebSocket; `sse`: Server-Sent Events, a
//!   one-way HTTP response stream; [`sockjs`]: SockJS's framings, over a WebSocket or over HTTP
//!   requests); [`codec`]: the protocols as codecs over them
//!   (native, [`codec::mqtt`], [`codec::stomp`]); `resume`: a native client's missed messages
//!   read from history, joined with live ones without gap or duplicate; [`streams`]: each
//!   recoverable stream passed on without hole (gaps repaired from history, duplicates dropped,
//!   positions checked).
//! - [`limits`]: the defences (address and origin lists, rates, caps, load shedding).
//! - [`webhook`]: connection, subscription and presence events posted to a project's back end.
#![deny(rust_2018_idioms)]

mod admission;
pub mod auth;
pub mod codec;
pub mod config;
pub mod deflate;
mod device;
pub mod frame;
pub mod handshake;
pub mod hub;
pub mod interest;
pub mod jwks;
pub mod limits;
pub mod listener;
pub mod local;
pub mod protocol;
pub mod proxy;
mod resume;
mod session;
pub mod sockjs;
mod sse;
pub mod streams;
pub mod tls;
mod tls_stream;
pub mod transport;
pub mod webhook;
mod ws;

use herald_core::history::History;
use herald_core::presence::{Announcer, PresenceEnabled, PresenceTap};
use herald_core::sessions::Sessions;
use hub::PresenceGate;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use herald_core::backoff::backoff;
use herald_core::bus::{Bus, ControlReply, ControlRequest, EdgeHandler};
use herald_core::codes::CloseCode;
use herald_core::ids::EdgeId;
use herald_core::proto::bus::{ENVELOPE_VERSION, Envelope};
use herald_core::registry::{Liveness, Registry};
use herald_core::telemetry;
use herald_core::trace::{self, Attribute};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::AuthKeys;
pub use config::EdgeConfig;
use hub::{Hub, HubConfig};

/// What can stop an edge from starting.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A listener's TLS material could not be loaded.
    #[error("edge listener {addr}: tls: {source}")]
    Tls {
        /// The listener's address.
        addr: SocketAddr,
        /// The cause.
        source: tls::TlsError,
    },
    /// The edge id is invalid.
    #[error("edge.id: {0}")]
    Id(#[from] herald_core::ids::IdError),
    /// The bus refused the edge.
    #[error(transparent)]
    Bus(#[from] herald_core::bus::BusError),
}

/// State every connection task shares.
pub(crate) struct Shared {
    pub(crate) cfg: EdgeConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) keys: Arc<ArcSwap<AuthKeys>>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) limits: Arc<limits::Limits>,
    /// MQTT client ids held on this edge (session takeover).
    pub(crate) mqtt_client_ids: Arc<codec::mqtt::takeover::ClientIds>,
    /// Where recoverable messages are kept: read to resume clients.
    pub(crate) history: Arc<dyn History>,
    /// Where devices' and MQTT sessions' acknowledged positions are kept.
    pub(crate) sessions: Arc<dyn Sessions>,
    /// SockJS sessions over HTTP requests.
    pub(crate) sockjs: Arc<sockjs::http::Table>,
    /// Where connection, subscription and presence events go to the projects' back ends.
    pub(crate) webhooks: Arc<webhook::Webhooks>,
}

/// A listener's settings and, on `wss`, its TLS state.
pub(crate) struct Bound {
    pub(crate) cfg: listener::ListenerConfig,
    pub(crate) tls: Option<Arc<tls::ListenerTls>>,
}

/// Asks every TLS listener of an edge to reload its certificate files (e.g. on SIGHUP).
#[derive(Clone)]
pub struct TlsReload(Arc<watch::Sender<u64>>);

impl TlsReload {
    /// Reloads; failures are logged and the running certificates stay.
    pub fn reload(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// A bound edge, ready to run.
pub struct Edge {
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, Arc<Bound>)>,
    tls_reload: TlsReload,
    registry: Arc<dyn Registry>,
}

/// What the bus hands to this edge: envelopes to deliver, operator calls to answer.
struct HubHandler {
    hub: Arc<Hub>,
    streams: Arc<streams::Streams>,
    limits: Arc<limits::Limits>,
    /// `edge.max_groups_per_connection`.
    max_groups: usize,
    /// How long a server-side subscription waits for the registry (`registration_timeout_ms`).
    registration_timeout: Duration,
    /// `herald_edge_delivery_seconds`, registered on first use and kept: a lookup of the series
    /// per envelope cost more than recording in it.
    delivery_seconds: std::sync::OnceLock<metrics::Histogram>,
}

impl EdgeHandler for HubHandler {
    fn deliver(&self, envelope: &Envelope) {
        if envelope.version != ENVELOPE_VERSION {
            metrics::counter!("herald_edge_envelopes_dropped_total", "reason" => "version")
                .increment(1);
            return;
        }
        // A delivery span joins the publish's trace when both ends trace.
        let span = (trace::enabled() && !envelope.trace_context.is_empty()).then(|| {
            trace::start(
                "herald.edge.deliver",
                trace::Kind::Consumer,
                &trace::extract(&envelope.trace_context),
                vec![
                    Attribute::new("herald.project", envelope.project.clone()),
                    Attribute::new("herald.message_id", envelope.message_id.clone()),
                ],
            )
        });
        self.streams.deliver(envelope);
        if envelope.published_at_unix_us > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            // A clock behind the router's reads as no delay rather than a negative one.
            let us = now.saturating_sub(envelope.published_at_unix_us).max(0);
            self.delivery_seconds
                .get_or_init(|| metrics::histogram!(telemetry::EDGE_DELIVERY_SECONDS))
                .record(us as f64 / 1e6);
        }
        if let Some(cx) = span {
            trace::end(&cx, None);
        }
    }

    fn control(&self, request: &ControlRequest) -> ControlReply {
        match request {
            ControlRequest::Subscribe {
                project,
                who,
                group,
                subscribe,
            } => ControlReply::Subscribed(self.subscribe(project, who, group, *subscribe).0),
            _ => self.hub.control(request),
        }
    }

    fn control_async<'a>(
        &'a self,
        request: &'a ControlRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ControlReply> + Send + 'a>> {
        let ControlRequest::Subscribe {
            project,
            who,
            group,
            subscribe,
        } = request
        else {
            return Box::pin(std::future::ready(self.hub.control(request)));
        };
        let (done, registered) = self.subscribe(project, who, group, *subscribe);
        let wait = self.registration_timeout;
        Box::pin(async move {
            // Answered once the registry holds the new members (as a client's own subscribe),
            // so a message published after the answer reaches them.
            let all = futures_util::future::join_all(registered);
            if tokio::time::timeout(wait, all).await.is_err() {
                metrics::counter!("herald_edge_registration_timeouts_total", "op" => "server_subscribe")
                    .increment(1);
            }
            ControlReply::Subscribed(done)
        })
    }
}

impl HubHandler {
    fn subscribe(
        &self,
        project: &herald_core::ids::ProjectId,
        who: &herald_core::bus::DisconnectWho,
        group: &herald_core::ids::GroupId,
        subscribe: bool,
    ) -> (herald_core::bus::Subscribed, Vec<interest::Registered>) {
        let max_groups = match self.limits.policy().project(project.as_str()) {
            Some(p) if p.max_subscriptions_per_connection > 0 => {
                (p.max_subscriptions_per_connection as usize).min(self.max_groups)
            }
            _ => self.max_groups,
        };
        let out = self
            .hub
            .subscribe_by_server(project, who, group, subscribe, max_groups);
        let op = if subscribe {
            "subscribe"
        } else {
            "unsubscribe"
        };
        metrics::counter!("herald_edge_server_subscriptions_total", "op" => op)
            .increment(u64::from(out.0.changed));
        out
    }
}

impl Edge {
    /// Binds the listener and attaches the edge to a shared registry (a cluster edge) and the
    /// bus.
    pub async fn bind(
        cfg: EdgeConfig,
        keys: Arc<ArcSwap<AuthKeys>>,
        registry: Arc<dyn Registry>,
        bus: Arc<dyn Bus>,
        history: Arc<dyn History>,
        sessions: Arc<dyn Sessions>,
    ) -> Result<Self, EdgeError> {
        Self::bind_with(cfg, keys, Some(registry), bus, history, sessions).await
    }

    /// Binds the listener of the only edge of a single node, whose hub is the registry
    /// ([`local::LocalRegistry`], then given by [`Edge::registry`] to the router), and attaches
    /// it to the bus.
    pub async fn bind_single(
        cfg: EdgeConfig,
        keys: Arc<ArcSwap<AuthKeys>>,
        bus: Arc<dyn Bus>,
        history: Arc<dyn History>,
        sessions: Arc<dyn Sessions>,
    ) -> Result<Self, EdgeError> {
        Self::bind_with(cfg, keys, None, bus, history, sessions).await
    }

    async fn bind_with(
        cfg: EdgeConfig,
        keys: Arc<ArcSwap<AuthKeys>>,
        registry: Option<Arc<dyn Registry>>,
        bus: Arc<dyn Bus>,
        history: Arc<dyn History>,
        sessions: Arc<dyn Sessions>,
    ) -> Result<Self, EdgeError> {
        let edge_id = EdgeId::new(&cfg.id)?;
        if !cfg.listeners.is_empty() && cfg.listen != EdgeConfig::default().listen {
            tracing::warn!(listen = %cfg.listen, "edge.listen is not used: edge.listeners is given");
        }
        let mut listeners = Vec::new();
        for lc in cfg.effective_listeners() {
            let tls = match &lc.tls {
                Some(t) => Some(Arc::new(tls::ListenerTls::load(t).map_err(|source| {
                    EdgeError::Tls {
                        addr: lc.addr,
                        source,
                    }
                })?)),
                None => None,
            };
            let l = listen(lc.addr).map_err(|source| EdgeError::Bind {
                addr: lc.addr,
                source,
            })?;
            listeners.push((l, Arc::new(Bound { cfg: lc, tls })));
        }
        let shards = if cfg.shards == 0 {
            4 * std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.shards
        };
        let hub = Hub::new(
            edge_id.clone(),
            HubConfig {
                shards,
                max_queued_bytes: cfg.max_queued_bytes,
                ping_interval: Duration::from_secs(cfg.ping_interval_secs),
                pong_timeout: Duration::from_secs(cfg.pong_timeout_secs),
                token_leeway: Duration::from_secs(cfg.token_leeway_secs),
                max_pending_interest: cfg.max_pending_interest,
                registry_batch: Duration::from_millis(cfg.registry_batch_ms),
                registration_timeout: Duration::from_millis(cfg.registration_timeout_ms),
                write_window: Duration::from_millis(cfg.write_window_ms),
            },
            registry.clone(),
        );
        let registry: Arc<dyn Registry> = match registry {
            Some(r) => r,
            None => local::LocalRegistry::new(hub.clone()),
        };
        // Presence events: found by the hub on a single node, by the registry's writes (and its
        // cleanup of dead edges) in a cluster; sent to the group's edges by the announcer.
        let enabled: PresenceEnabled = {
            let keys = keys.clone();
            Arc::new(move |p: &str| keys.load().presence_events(p))
        };
        let webhooks = webhook::Webhooks::new(keys.clone(), &cfg.id);
        let tap: Option<PresenceTap> = {
            let webhooks = webhooks.clone();
            Some(Arc::new(move |e: &herald_core::presence::PresenceEvent| {
                webhooks.presence(e)
            }))
        };
        let announcer = Announcer::start(registry.clone(), bus.clone(), enabled.clone(), tap);
        registry.set_presence_sink(announcer.clone());
        hub.set_presence(PresenceGate {
            enabled,
            sink: announcer,
        });
        // Known alive before the first client is accepted, so a router never drops its messages
        // as addressed to an unknown edge. Failing that, the liveness loop keeps trying.
        match tokio::time::timeout(Duration::from_secs(5), registry.heartbeat(&edge_id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "first registry heartbeat failed"),
            Err(_) => tracing::warn!("first registry heartbeat timed out"),
        }
        let streams = streams::Streams::new(hub.clone(), history.clone());
        if cfg.history_check_secs > 0 {
            tokio::spawn(
                streams
                    .clone()
                    .check_every(Duration::from_secs(cfg.history_check_secs)),
            );
        }
        let limits = Arc::new(limits::Limits::new(&cfg.limits));
        bus.attach(
            edge_id,
            Arc::new(HubHandler {
                hub: hub.clone(),
                streams,
                limits: limits.clone(),
                max_groups: cfg.max_groups_per_connection,
                registration_timeout: Duration::from_millis(cfg.registration_timeout_ms),
                delivery_seconds: Default::default(),
            }),
        )
        .await?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer_bytes)
            .write_buffer_size(0)
            .max_message_size(Some(cfg.max_message_bytes))
            .max_frame_size(Some(match cfg.max_frame_bytes {
                0 => cfg.max_message_bytes,
                n => n,
            }));
        tracing::info!(max_connections = limits.max_connections(), "connection cap");
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                hub,
                keys,
                ws_config,
                limits,
                mqtt_client_ids: Default::default(),
                history,
                sessions,
                sockjs: Default::default(),
                webhooks,
            }),
            listeners,
            tls_reload: TlsReload(Arc::new(watch::channel(0).0)),
            registry,
        })
    }

    /// The registry this edge registers with: the shared one, or on a single node the one its
    /// hub answers.
    pub fn registry(&self) -> Arc<dyn Registry> {
        self.registry.clone()
    }

    /// The address the first listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self.listeners.first() {
            Some((l, _)) => l.local_addr(),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// The addresses of every listener, in configuration order.
    pub fn local_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|(l, _)| l.local_addr()).collect()
    }

    /// A handle that reloads the TLS listeners' certificates.
    pub fn tls_reload(&self) -> TlsReload {
        self.tls_reload.clone()
    }

    /// The hub (for embedding and tests).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.shared.hub
    }

    /// The edge's defences, to reload their policy ([`limits::Limits::reload`]).
    pub fn limits(&self) -> Arc<limits::Limits> {
        self.shared.limits.clone()
    }

    /// Accepts clients until `cancel` fires, then closes every client with going-away and waits
    /// up to `grace` for them to finish.
    pub async fn run(self, cancel: CancellationToken, grace: Duration) {
        let tracker = TaskTracker::new();
        let shared = self.shared.clone();
        let ticker = tokio::spawn(tick_loop(shared.clone(), cancel.clone()));
        let window = {
            let hub = shared.hub.clone();
            tokio::spawn(async move { hub.run_write_window().await })
        };
        let liveness = tokio::spawn(liveness_loop(
            shared.hub.clone(),
            self.registry.clone(),
            cancel.clone(),
        ));
        let mut accepts = Vec::new();
        for (l, bound) in self.listeners {
            if let Some(t) = &bound.tls {
                tokio::spawn(
                    t.clone()
                        .watch(self.tls_reload.0.subscribe(), cancel.clone()),
                );
            }
            accepts.push(tokio::spawn(accept_loop(
                l,
                bound,
                shared.clone(),
                tracker.clone(),
                cancel.clone(),
            )));
        }
        for a in accepts {
            // Each loop ends on cancel and drops its listener.
            let _ = a.await;
        }
        tracker.close();
        let n = shared
            .hub
            .close_all(CloseCode::GoingAway, shared.cfg.reconnect_jitter_ms);
        tracing::info!(connections = n, "edge draining");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(left = shared.hub.len(), "drain deadline passed");
        }
        ticker.abort();
        window.abort();
        liveness.abort();
        // Routing to this edge stops now rather than at the liveness expiry.
        let edge = shared.hub.edge();
        match tokio::time::timeout(Duration::from_secs(2), self.registry.deregister(edge)).await {
            Ok(Ok(())) => tracing::info!("edge deregistered"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistration failed; entries expire"),
            Err(_) => tracing::warn!("deregistration timed out; entries expire"),
        }
    }
}

/// Counts a failed accept; the wait before the next one, `None` for a connection the peer
/// aborted before it was accepted (nothing to wait for).
fn accept_backoff(e: &std::io::Error, failures: &mut u32) -> Option<Duration> {
    // EMFILE (24) and ENFILE (23): out of file descriptors; ENOBUFS, ENOMEM: out of memory.
    let kind = match e.raw_os_error() {
        Some(23 | 24) => "fd_exhausted",
        Some(12 | 105) => "no_memory",
        _ if e.kind() == std::io::ErrorKind::ConnectionAborted => {
            metrics::counter!("herald_edge_accept_errors_total", "kind" => "aborted").increment(1);
            return None;
        }
        _ => "other",
    };
    metrics::counter!("herald_edge_accept_errors_total", "kind" => kind).increment(1);
    if *failures == 0 {
        tracing::warn!(error = %e, kind, "accept failed; backing off");
    }
    *failures = failures.saturating_add(1);
    Some(backoff(
        *failures,
        Duration::from_millis(5),
        Duration::from_millis(500),
    ))
}

/// Accepts clients on one listener until `cancel` fires.
async fn accept_loop(
    listener: TcpListener,
    bound: Arc<Bound>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                failures = 0;
                tracker.spawn(session::ConnTask::new(
                    shared.clone(),
                    bound.clone(),
                    tcp,
                    peer,
                ));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off, never spin or exit.
                let Some(wait) = accept_backoff(&e, &mut failures) else {
                    continue;
                };
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn tick_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    // A late tick is not made up for: the hub's clock counts the seconds the edge ran.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        shared.hub.tick();
        shared.limits.sweep();
    }
}

/// Accept-queue length asked of the kernel (which caps it at `net.core.somaxconn`). tokio's
/// `TcpListener::bind` asks 1,024: at 10,000 connects a second the queue overflowed and a
/// handshake waited for the client's one-second SYN retry (welcome p99 1.04 s on one edge).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds a listening socket with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's own bind).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Heartbeats the registry. Whenever the edge was not known alive (first start, a restarted or
/// flushed registry, an expiry while unreachable) or the registry was unreachable, the edge's
/// whole interest is written again. Failures are retried with backoff and jitter; the edge goes
/// on serving its clients meanwhile.
async fn liveness_loop(hub: Arc<Hub>, registry: Arc<dyn Registry>, cancel: CancellationToken) {
    let edge = hub.edge().clone();
    let mut failures = 0u32;
    let mut first = true;
    loop {
        let began = tokio::time::Instant::now();
        // A heartbeat that takes longer than its interval is given up and sent again: the
        // renewal is its first call, and only renewals sent keep the edge alive.
        let outcome =
            tokio::time::timeout(registry.heartbeat_interval(), registry.heartbeat(&edge))
                .await
                .unwrap_or_else(|_| {
                    Err(herald_core::registry::RegistryError::Unavailable(
                        "heartbeat took longer than its interval".into(),
                    ))
                });
        let wait = match outcome {
            Ok(Liveness::Fenced) => {
                tracing::warn!("edge is being cleaned up as dead; registering again after it");
                failures += 1;
                backoff(failures, Duration::from_millis(200), Duration::from_secs(2))
            }
            Ok(liveness) => {
                // Queued, not awaited: heartbeats go on while a large interest is rewritten,
                // and resyncs queued together are written once.
                if liveness == Liveness::Registered || first {
                    tracing::info!(?liveness, "registering the edge's whole interest");
                    metrics::counter!("herald_edge_resyncs_total", "why" => "registered")
                        .increment(1);
                    drop(hub.interest().resync());
                } else if failures > 0 {
                    // Still known alive under the same registry epoch: nothing was lost that
                    // the writer's own retries do not cover, but a restore from a snapshot may
                    // hold an older state. The resync compares with the edge's index and writes
                    // only the difference, after a random part of a heartbeat interval, so that
                    // edges coming back from a slow or restarted Redis do not all write at once.
                    let jitter = registry.heartbeat_interval().mul_f64(rand::random::<f64>());
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(jitter).await;
                        tracing::info!("checking the edge's interest against the registry");
                        metrics::counter!("herald_edge_resyncs_total", "why" => "reconnected")
                            .increment(1);
                        drop(hub.interest().resync());
                    });
                }
                first = false;
                failures = 0;
                // Renewals come once per interval from start to start: a heartbeat's other
                // calls (the edge set, the epoch, the live-edge refresh) each take up to the
                // Redis timeout on a slow Redis, and waiting a whole interval after them let
                // renewals drift apart past the TTL (3 s calls + 5 s wait + ... > 15 s).
                registry
                    .heartbeat_interval()
                    .saturating_sub(began.elapsed())
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "registry heartbeat failed; retrying with backoff");
                }
                failures += 1;
                // No slower than the heartbeat itself: a renewal that timed out may still have
                // reached a slow Redis, and only renewals sent keep the edge from expiring (a
                // cap above the TTL's third let a live edge expire and be cleaned up as dead).
                backoff(
                    failures,
                    Duration::from_millis(100),
                    registry.heartbeat_interval(),
                )
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::bus::MemoryBus;
    use herald_core::ids::ProjectId;
    use herald_core::registry::{InterestChange, InterestKey, MemoryRegistry, RegistryError};

    /// An edge on loopback with in-process bus, history and sessions, no keys, and `registry`.
    async fn in_memory_edge(registry: Arc<dyn Registry>) -> Edge {
        let cfg = EdgeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        let keys = Arc::new(ArcSwap::from_pointee(
            AuthKeys::load(&[], 0).expect("no keys"),
        ));
        Edge::bind(
            cfg,
            keys,
            registry,
            Arc::new(MemoryBus::new()),
            Arc::new(herald_core::history::MemoryHistory::new()),
            Arc::new(herald_core::sessions::MemorySessions::new()),
        )
        .await
        .expect("bind")
    }

    /// A registry whose heartbeat answers after 600 ms, with a 1 s interval; counts the calls.
    struct SlowHeartbeats {
        inner: MemoryRegistry,
        calls: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl Registry for SlowHeartbeats {
        async fn heartbeat(&self, edge: &EdgeId) -> Result<Liveness, RegistryError> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(600)).await;
            self.inner.heartbeat(edge).await
        }
        fn heartbeat_interval(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn update(&self, e: &EdgeId, c: &[InterestChange]) -> Result<(), RegistryError> {
            self.inner.update(e, c).await
        }
        async fn resync(&self, e: &EdgeId, k: &[InterestKey]) -> Result<(), RegistryError> {
            self.inner.resync(e, k).await
        }
        async fn deregister(&self, e: &EdgeId) -> Result<(), RegistryError> {
            self.inner.deregister(e).await
        }
        async fn edges_for(&self, k: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
            self.inner.edges_for(k).await
        }
        async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
            self.inner.live_edges().await
        }
        async fn claim_idempotency_key(
            &self,
            p: &ProjectId,
            k: &str,
            w: Duration,
        ) -> Result<bool, RegistryError> {
            self.inner.claim_idempotency_key(p, k, w).await
        }
        async fn release_idempotency_key(
            &self,
            p: &ProjectId,
            k: &str,
        ) -> Result<(), RegistryError> {
            self.inner.release_idempotency_key(p, k).await
        }
    }

    /// Heartbeats start once per interval even when each takes most of one: a slow registry
    /// does not stretch the time between renewals past the liveness TTL.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_their_interval_when_the_registry_is_slow() {
        let registry = Arc::new(SlowHeartbeats {
            inner: MemoryRegistry::new(),
            calls: Default::default(),
        });
        let edge = in_memory_edge(registry.clone()).await;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(liveness_loop(
            edge.shared.hub.clone(),
            registry.clone(),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(10_050)).await;
        cancel.cancel();
        task.await.expect("loop");
        // One at bind, then the loop's at 0, 1, ..., 10 s: twelve. Waiting the interval after
        // each 600 ms call gave eight (bind, then 0, 1.6, 3.2, ... 9.6 s).
        let calls = registry.calls.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(calls, 12, "heartbeats started in 10 s");
    }

    /// Every idle connection holds one task whose future is this big: two words, so that the
    /// task, with tokio's own fields and the task tracker's handle, fits 128 bytes (tokio aligns
    /// a task to 128: one word more and it takes 256).
    #[tokio::test]
    async fn connection_task_stays_small() {
        let edge = in_memory_edge(Arc::new(MemoryRegistry::new())).await;
        let addr = edge.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (listener, bound) = &edge.listeners[0];
        let (tcp, remote) = listener.accept().await.expect("accept");
        let fut = session::ConnTask::new(edge.shared.clone(), bound.clone(), tcp, remote);
        let size = std::mem::size_of_val(&fut);
        println!("connection future: {size} bytes");
        assert!(size <= 16, "connection future grew to {size} bytes");
    }
}
