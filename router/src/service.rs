//! The `herald.v1.Herald` gRPC service. Every failure is an [`ApiError`], turned into a gRPC
//! status only at the edge of each call.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt as _;
use herald_core::bus::{
    Bus, BusError, ControlOutcome, ControlReply, ControlRequest, Destination, DisconnectWho,
    ListOf, ProjectStats,
};
use herald_core::history::{History, StreamKey, StreamTarget};
use herald_core::ids::{ConnectionId, EdgeId, GroupId, ProjectId, UserId};
use herald_core::proto::bus::{ENVELOPE_VERSION, Envelope, TargetKind};
use herald_core::proto::v1::herald_server::Herald;
use herald_core::proto::v1::{
    ConnectionInfo, CountConnectionsReply, CountConnectionsRequest, DisconnectReply,
    DisconnectRequest, ListConnectionsReply, ListConnectionsRequest, PresenceReply,
    PresenceRequest, PresentUser, PublishAck, PublishReply, PublishRequest, PublishStreamReply,
    PublishStreamRequest, Resolution, SubscribeReply, SubscribeRequest, disconnect_request,
    list_connections_request, subscribe_request, target,
};
use herald_core::registry::{InterestKey, Registry, Route};
use herald_core::telemetry::{self, Timer};
use herald_core::trace::{self, Attribute, FutureExt as _, TraceContext, TraceContextExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::config::RouterConfig;
use crate::error::ApiError;
use crate::keys::{ApiKeys, Scope};

/// How a message was handed on.
struct Handed {
    /// Edges it was handed to (for the broadcast path: the edges listening, 0 when unknown).
    edges: u32,
    /// Sent by the project's broadcast path because the registry was not whole.
    fallback: bool,
}

/// Most acks sent in one stream reply.
const MAX_ACK_BATCH: usize = 256;

/// Connections in a listing page when the request names no page size.
pub const DEFAULT_PAGE_SIZE: u32 = 1_000;
/// Most connections in a listing page: a larger page size is taken as this.
pub const MAX_PAGE_SIZE: u32 = 5_000;

/// The router's gRPC service.
#[derive(Clone)]
pub struct RouterService {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RouterConfig,
    keys: Arc<ArcSwap<ApiKeys>>,
    registry: Arc<dyn Registry>,
    bus: Arc<dyn Bus>,
    history: Arc<dyn History>,
    id_prefix: u32,
    next_id: AtomicU64,
    metrics: PublishMetrics,
}

/// The metric handles every publish updates, each registered with the recorder on its first
/// use and kept: looking a series up by name and labels for every message cost more than the
/// update itself (issue 15's unicast profile). Registered lazily, so a series appears in
/// `/metrics` once it has a value, as before.
#[derive(Default)]
struct PublishMetrics {
    /// `herald_router_publish_duration_seconds` by target: broadcast, group, user.
    seconds: [OnceLock<metrics::Histogram>; 3],
    /// `herald_router_publishes_total` by resolution: delivered, no_recipients, duplicate.
    publishes: [OnceLock<metrics::Counter>; 3],
}

impl PublishMetrics {
    const TARGETS: [&'static str; 3] = ["broadcast", "group", "user"];
    const RESOLUTIONS: [&'static str; 3] = ["delivered", "no_recipients", "duplicate"];

    /// The publish duration histogram of target `i` of [`Self::TARGETS`].
    fn seconds(&self, i: usize) -> &metrics::Histogram {
        self.seconds[i].get_or_init(
            || metrics::histogram!(telemetry::ROUTER_PUBLISH_SECONDS, "target" => Self::TARGETS[i]),
        )
    }

    /// The publish counter of resolution `i` of [`Self::RESOLUTIONS`].
    fn publishes(&self, i: usize) -> &metrics::Counter {
        self.publishes[i].get_or_init(|| {
            metrics::counter!("herald_router_publishes_total", "resolution" => Self::RESOLUTIONS[i])
        })
    }
}

fn valid_event(e: &str) -> bool {
    e.len() <= 64
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl RouterService {
    /// A service resolving through `registry`, keeping recoverable messages in `history` and
    /// publishing on `bus`.
    pub fn new(
        cfg: RouterConfig,
        keys: Arc<ArcSwap<ApiKeys>>,
        registry: Arc<dyn Registry>,
        bus: Arc<dyn Bus>,
        history: Arc<dyn History>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                keys,
                registry,
                bus,
                history,
                id_prefix: rand::random(),
                next_id: AtomicU64::new(1),
                metrics: PublishMetrics::default(),
            }),
        }
    }

    /// Whether the web console is served (`router.console`).
    pub fn console_enabled(&self) -> bool {
        self.inner.cfg.console
    }

    /// The largest gRPC message this service accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.inner.cfg.max_payload_bytes + 64 * 1024
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Scope, ApiError> {
        self.authenticate_metadata(req.metadata())
    }

    /// The scope of the API key in the `authorization` metadata (or HTTP header).
    pub(crate) fn authenticate_metadata(&self, md: &MetadataMap) -> Result<Scope, ApiError> {
        self.inner.keys.load().authenticate(md)
    }

    /// Checks the project id, its existence and the key's right to it.
    fn project(&self, scope: &Scope, project: &str) -> Result<ProjectId, ApiError> {
        let id = ProjectId::new(project).map_err(|e| ApiError::invalid("project", e))?;
        scope.allow(project)?;
        if !self.inner.keys.load().has_project(project) {
            return Err(ApiError::UnknownProject(project.to_string()));
        }
        Ok(id)
    }

    /// Publishes one message for a caller of `scope`: an accepted one is timed
    /// (`herald_router_publish_duration_seconds`) and, when tracing is on, traced (a
    /// `herald.router.publish` span, child of the caller's trace context when it sent one).
    pub(crate) async fn publish_one(
        &self,
        scope: &Scope,
        req: PublishRequest,
    ) -> Result<PublishReply, ApiError> {
        let timer = Timer::start();
        // The index of the target's label in `PublishMetrics::TARGETS`, if any.
        let target_index = match req.target.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(target::Kind::Broadcast(_)) => Some(0),
            Some(target::Kind::Group(_)) => Some(1),
            Some(target::Kind::User(_)) => Some(2),
            None => None,
        };
        let target = target_index.map_or("none", |i| PublishMetrics::TARGETS[i]);
        let outcome = if trace::enabled() {
            let cx = trace::start(
                "herald.router.publish",
                trace::Kind::Producer,
                &TraceContext::current(),
                vec![
                    Attribute::new("herald.project", req.project.clone()),
                    Attribute::new("herald.target", target),
                ],
            );
            let outcome = self
                .publish_inner(scope, req)
                .with_context(cx.clone())
                .await;
            match &outcome {
                Ok(reply) => {
                    let span = cx.span();
                    span.set_attribute(Attribute::new(
                        "herald.message_id",
                        reply.message_id.clone(),
                    ));
                    span.set_attribute(Attribute::new("herald.edges", i64::from(reply.edges)));
                    trace::end(&cx, None);
                }
                Err(e) => trace::end(&cx, Some(e)),
            }
            outcome
        } else {
            self.publish_inner(scope, req).await
        };
        if outcome.is_ok()
            && let Some(i) = target_index
        {
            self.inner.metrics.seconds(i).record(timer.seconds());
        }
        outcome
    }

    async fn publish_inner(
        &self,
        scope: &Scope,
        req: PublishRequest,
    ) -> Result<PublishReply, ApiError> {
        let inner = &self.inner;
        let project = self.project(scope, &req.project)?;
        let target = req
            .target
            .and_then(|t| t.kind)
            .ok_or_else(|| ApiError::invalid("target", "required (broadcast, group or user)"))?;
        let (kind, name, key, stream) = match target {
            target::Kind::Broadcast(_) => (
                TargetKind::Broadcast,
                String::new(),
                None,
                StreamTarget::Broadcast,
            ),
            target::Kind::Group(g) => {
                let id = GroupId::new(&g).map_err(|e| ApiError::invalid("target.group", e))?;
                (
                    TargetKind::Group,
                    g,
                    Some(InterestKey::Group(project.clone(), id.clone())),
                    StreamTarget::Group(id),
                )
            }
            target::Kind::User(u) => {
                let id = UserId::new(&u).map_err(|e| ApiError::invalid("target.user", e))?;
                (
                    TargetKind::User,
                    u,
                    Some(InterestKey::User(project.clone(), id.clone())),
                    StreamTarget::User(id),
                )
            }
        };
        if req.payload.len() > inner.cfg.max_payload_bytes {
            return Err(ApiError::invalid(
                "payload",
                format_args!(
                    "{} bytes, more than the limit of {}",
                    req.payload.len(),
                    inner.cfg.max_payload_bytes
                ),
            ));
        }
        if !valid_event(&req.event) {
            return Err(ApiError::invalid(
                "event",
                "at most 64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        if req.idempotency_key.len() > 128 {
            return Err(ApiError::invalid(
                "idempotency_key",
                "longer than 128 bytes",
            ));
        }
        let message_id = format!(
            "{:08x}-{:x}",
            inner.id_prefix,
            inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        if !req.idempotency_key.is_empty() {
            let window = Duration::from_secs(inner.cfg.idempotency_window_secs);
            let fresh = inner
                .registry
                .claim_idempotency_key(&project, &req.idempotency_key, window)
                .await?;
            if !fresh {
                inner.metrics.publishes(2).increment(1);
                return Ok(PublishReply {
                    message_id,
                    resolution: Resolution::Duplicate as i32,
                    ..Default::default()
                });
            }
        }
        let mut envelope = Envelope {
            version: ENVELOPE_VERSION,
            project: project.to_string(),
            kind: kind as i32,
            name,
            payload: req.payload,
            event: req.event,
            message_id: message_id.clone(),
            seq: 0,
            epoch: 0,
            published_at_unix_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
            trace_context: HashMap::new(),
            presence: None,
        };
        let retention = inner
            .keys
            .load()
            .history(project.as_str())
            .filter(|h| h.keeps(&stream))
            .map(|h| h.retention());
        let stored = match retention {
            None => Ok(None),
            Some(retention) => {
                // Stored before it is sent: what an edge or a resuming client reads back is
                // what went out, under the offset it went out with.
                let stream = StreamKey {
                    project: project.clone(),
                    target: stream,
                };
                let data = Bytes::from(envelope.encode_to_vec());
                inner
                    .history
                    .append(&stream, retention, data)
                    .await
                    .map(Some)
            }
        };
        let handed = match stored {
            Ok(position) => {
                if let Some(p) = position {
                    envelope.seq = p.offset;
                    envelope.epoch = p.epoch;
                }
                // After the history copy: only live deliveries join the publish's trace.
                if trace::enabled() {
                    trace::inject(&TraceContext::current(), &mut envelope.trace_context);
                }
                self.hand_off(&project, key.as_ref(), &envelope)
                    .await
                    .map(|handed| (handed, position))
            }
            Err(e) => Err(e.into()),
        };
        let (Handed { edges, fallback }, position) = match handed {
            Ok(edges) => edges,
            Err(e) => {
                if !req.idempotency_key.is_empty() {
                    // Not handed on: the publisher's retry must not count as a repeat.
                    let _ = inner
                        .registry
                        .release_idempotency_key(&project, &req.idempotency_key)
                        .await;
                }
                return Err(e);
            }
        };
        let resolution = if edges == 0 && key.is_some() && !fallback {
            Resolution::NoRecipients
        } else {
            Resolution::Delivered
        };
        inner
            .metrics
            .publishes(usize::from(resolution == Resolution::NoRecipients))
            .increment(1);
        Ok(PublishReply {
            message_id,
            resolution: resolution as i32,
            edges,
            fallback,
            offset: position.map_or(0, |p| p.offset),
            epoch: position.map_or(0, |p| p.epoch),
        })
    }

    /// Sends an envelope by the project's broadcast path: every edge receives it and delivers it
    /// to its local recipients of the envelope's own target. Returns the edges listening (0 when
    /// the registry cannot say).
    async fn to_every_edge(
        &self,
        project: &ProjectId,
        envelope: &Envelope,
    ) -> Result<u32, ApiError> {
        let inner = &self.inner;
        inner
            .bus
            .publish(Destination::Broadcast(project), envelope)
            .await?;
        if inner.registry.degraded().is_some() {
            return Ok(0);
        }
        match inner.registry.live_edges().await {
            Ok(edges) => Ok(edges.len() as u32),
            Err(e) => {
                tracing::debug!(error = %e, "sent to every edge; live edges unknown");
                Ok(0)
            }
        }
    }

    /// Resolves the target and hands the envelope to every edge that must receive it.
    ///
    /// While the registry is incomplete (rebuilt after a flush or a restart) or unreachable, a
    /// group or user target goes by the project's broadcast path instead, so that every edge
    /// that may hold it gets it: never a recipient missed for a registry that is not whole.
    async fn hand_off(
        &self,
        project: &ProjectId,
        key: Option<&InterestKey>,
        envelope: &Envelope,
    ) -> Result<Handed, ApiError> {
        let inner = &self.inner;
        match key {
            None => {
                // A broadcast needs no lookup: it is delivered even while the registry is
                // unreachable; only the count of edges is then unknown (0).
                let edges = self.to_every_edge(project, envelope).await?;
                Ok(Handed {
                    edges,
                    fallback: false,
                })
            }
            Some(key) => {
                let why = match inner.registry.resolve(key).await {
                    Ok(Route::Edges(edges)) => {
                        return self.to_edges(&edges, envelope).await.map(|edges| Handed {
                            edges,
                            fallback: false,
                        });
                    }
                    Ok(Route::Incomplete(why)) => ("incomplete", why),
                    Err(e) => ("unreachable", e.to_string()),
                };
                metrics::counter!("herald_router_fallback_publishes_total", "registry" => why.0)
                    .increment(1);
                tracing::debug!(registry = why.0, why = %why.1, "target sent to every edge of the project");
                let edges = self.to_every_edge(project, envelope).await?;
                Ok(Handed {
                    edges,
                    fallback: true,
                })
            }
        }
    }

    /// Hands the envelope to each of `edges`; returns how many took it.
    async fn to_edges(&self, edges: &[EdgeId], envelope: &Envelope) -> Result<u32, ApiError> {
        let mut sent = 0;
        for edge in edges {
            match self
                .inner
                .bus
                .publish(Destination::Edge(edge), envelope)
                .await
            {
                Ok(()) => sent += 1,
                Err(BusError::UnknownEdge(e)) => {
                    tracing::debug!(edge = %e, "registry named an edge the bus does not know");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }

    /// Publishes one message of a stream; its outcome, error included, is its ack.
    async fn publish_streamed(&self, scope: &Scope, m: PublishStreamRequest) -> PublishAck {
        let request_id = m.request_id;
        let outcome = match m.message {
            None => Err(ApiError::invalid("message", "required")),
            Some(msg) => self.publish_one(scope, msg).await,
        };
        ack(request_id, outcome)
    }
}

/// The ack of one message of a stream or a batch: its reply, or its error's code and message.
pub(crate) fn ack(request_id: u64, outcome: Result<PublishReply, ApiError>) -> PublishAck {
    match outcome {
        Ok(reply) => PublishAck {
            request_id,
            reply: Some(reply),
            ..Default::default()
        },
        Err(e) => PublishAck {
            request_id,
            reply: None,
            error_code: e.code() as i32,
            error_message: e.to_string(),
        },
    }
}

impl RouterService {
    async fn control(&self, req: ControlRequest) -> Result<ControlOutcome, ApiError> {
        let deadline = Duration::from_millis(self.inner.cfg.control_timeout_ms);
        // Without the live edges no reply could say who is missing: refuse rather than
        // silently undercount.
        let live = self.inner.registry.live_edges().await?;
        Ok(self.inner.bus.control(&req, &live, deadline).await?)
    }

    /// Counts connections for a caller of `scope`.
    pub(crate) async fn count(
        &self,
        scope: &Scope,
        req: CountConnectionsRequest,
    ) -> Result<CountConnectionsReply, ApiError> {
        let project = match (scope, req.project.is_empty()) {
            (Scope::Admin, true) => None,
            (Scope::Project(p), true) => Some(self.project(scope, p)?),
            (_, false) => Some(self.project(scope, &req.project)?),
        };
        let outcome = self
            .control(ControlRequest::Count {
                project: project.clone(),
            })
            .await?;
        let mut connections: HashMap<String, u64> = HashMap::new();
        match &project {
            Some(p) => {
                connections.insert(p.to_string(), 0);
            }
            None => {
                for p in self.inner.keys.load().projects() {
                    connections.insert(p.to_string(), 0);
                }
            }
        }
        for (_, reply) in &outcome.replies {
            if let ControlReply::Count(counts) = reply {
                for (p, n) in counts {
                    *connections.entry(p.clone()).or_default() += n;
                }
            }
        }
        Ok(CountConnectionsReply {
            connections,
            missing_edges: missing(&outcome),
        })
    }

    /// Every edge's connections and traffic counters per project, as the caller of `scope` may
    /// see them (a project key: its project only), with the edges that did not answer.
    pub(crate) async fn stats(
        &self,
        scope: &Scope,
    ) -> Result<(Vec<(EdgeId, HashMap<String, ProjectStats>)>, Vec<String>), ApiError> {
        let outcome = self.control(ControlRequest::Stats).await?;
        let missing = missing(&outcome);
        let edges = outcome
            .replies
            .into_iter()
            .filter_map(|(edge, reply)| match reply {
                ControlReply::Stats(mut projects) => {
                    projects.retain(|p, _| scope.allow(p).is_ok());
                    Some((edge, projects))
                }
                _ => None,
            })
            .collect();
        Ok((edges, missing))
    }

    /// Lists one page of connections for a caller of `scope`.
    pub(crate) async fn list(
        &self,
        scope: &Scope,
        req: ListConnectionsRequest,
    ) -> Result<ListConnectionsReply, ApiError> {
        let project = self.project(scope, &req.project)?;
        let of = match req.of {
            Some(list_connections_request::Of::User(u)) => {
                ListOf::User(UserId::new(&u).map_err(|e| ApiError::invalid("user", e))?)
            }
            Some(list_connections_request::Of::Group(g)) => {
                ListOf::Group(GroupId::new(&g).map_err(|e| ApiError::invalid("group", e))?)
            }
            None => return Err(ApiError::invalid("of", "a user or a group is required")),
        };
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(
                t.parse::<ConnectionId>()
                    .map_err(|_| ApiError::invalid("page_token", "not a next_page_token"))?,
            ),
        };
        // Each edge gives at most one more than a page: more than a page in all means another
        // page follows.
        let outcome = self
            .control(ControlRequest::List {
                project,
                of,
                after: after.clone(),
                limit: Some(page_size + 1),
            })
            .await?;
        let mut found: Vec<(ConnectionId, ConnectionInfo)> = Vec::new();
        for (_, reply) in outcome.replies.iter() {
            if let ControlReply::List(list) = reply {
                // Edges that predate paging answer everything: the cursor is applied here too.
                found.extend(list.iter().filter_map(|c| {
                    let id = c.id.parse::<ConnectionId>().ok()?;
                    after
                        .as_ref()
                        .is_none_or(|a| id > *a)
                        .then(|| (id, c.clone()))
                }));
            }
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let page_size = page_size as usize;
        let next_page_token = if found.len() > page_size {
            found.truncate(page_size);
            found
                .last()
                .map(|(id, _)| id.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListConnectionsReply {
            connections: found.into_iter().map(|(_, c)| c).collect(),
            missing_edges: missing(&outcome),
            next_page_token,
        })
    }

    /// Tells who is in a group (one page of users) for a caller of `scope`.
    pub(crate) async fn presence(
        &self,
        scope: &Scope,
        req: PresenceRequest,
    ) -> Result<PresenceReply, ApiError> {
        let project = self.project(scope, &req.project)?;
        let group = GroupId::new(&req.group).map_err(|e| ApiError::invalid("group", e))?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(
                UserId::new(t)
                    .map_err(|_| ApiError::invalid("page_token", "not a next_page_token"))?,
            ),
        };
        // Each edge gives at most one more user than a page, so an edge with more shows it.
        let limit = page_size + 1;
        let outcome = self
            .control(ControlRequest::Presence {
                project,
                group,
                after: after.clone(),
                limit: Some(limit),
            })
            .await?;
        let mut merged: BTreeMap<String, u32> = BTreeMap::new();
        let (mut connections, mut users_sum, mut holding) = (0u64, 0u64, 0usize);
        // The lowest last user of the edges that had more than they gave: past it, an edge's
        // users are not all known yet, so the page ends there at the latest.
        let mut cut: Option<String> = None;
        for (_, reply) in &outcome.replies {
            let ControlReply::Presence(p) = reply else {
                continue;
            };
            connections += p.connections;
            users_sum += p.users_total;
            holding += usize::from(p.users_total > 0);
            if p.users.len() >= limit as usize
                && let Some((last, _)) = p.users.last()
                && cut.as_ref().is_none_or(|c| last < c)
            {
                cut = Some(last.clone());
            }
            for (user, n) in &p.users {
                if after.as_ref().is_none_or(|a| user.as_str() > a.as_str()) {
                    *merged.entry(user.clone()).or_default() += n;
                }
            }
        }
        // Every user of the group seen once: the distinct count is exact.
        let whole = after.is_none() && cut.is_none();
        let (users_total, users_exact) = if whole {
            (merged.len() as u64, true)
        } else {
            (users_sum, holding <= 1)
        };
        if let Some(c) = &cut {
            merged.retain(|u, _| u <= c);
        }
        let page_size = page_size as usize;
        let more = merged.len() > page_size;
        let users: Vec<PresentUser> = merged
            .into_iter()
            .take(page_size)
            .map(|(user, connections)| PresentUser { user, connections })
            .collect();
        let next_page_token = match users.last() {
            Some(u) if more => u.user.clone(),
            _ => String::new(),
        };
        Ok(PresenceReply {
            users,
            connections,
            users_total,
            users_exact,
            missing_edges: missing(&outcome),
            next_page_token,
        })
    }

    /// Disconnects for a caller of `scope`.
    pub(crate) async fn kick(
        &self,
        scope: &Scope,
        req: DisconnectRequest,
    ) -> Result<DisconnectReply, ApiError> {
        let project = self.project(scope, &req.project)?;
        let who = match req.who {
            Some(disconnect_request::Who::User(u)) => parse_who(Some(u), None)?,
            Some(disconnect_request::Who::ConnectionId(c)) => parse_who(None, Some(c))?,
            None => parse_who(None, None)?,
        };
        let Some(who) = who else {
            return Ok(DisconnectReply::default());
        };
        let outcome = self
            .control(ControlRequest::Disconnect {
                project,
                who,
                reconnect_after_ms: req.reconnect_after_ms,
            })
            .await?;
        let disconnected = outcome
            .replies
            .iter()
            .map(|(_, r)| match r {
                ControlReply::Disconnected(n) => *n,
                _ => 0,
            })
            .sum();
        Ok(DisconnectReply {
            disconnected,
            missing_edges: missing(&outcome),
        })
    }
}

/// The connection or user an operator call names: `None` for a connection id not of the form
/// `<edge>-<number>` (it names no connection, docs/api.md); an error when neither is given, the
/// id is empty or longer than 128 bytes, or the user id is invalid.
fn parse_who(
    user: Option<String>,
    conn: Option<String>,
) -> Result<Option<DisconnectWho>, ApiError> {
    match (user, conn) {
        (Some(u), _) => Ok(Some(DisconnectWho::User(
            UserId::new(&u).map_err(|e| ApiError::invalid("user", e))?,
        ))),
        (None, Some(c)) if !c.is_empty() && c.len() <= 128 => Ok(c
            .parse::<ConnectionId>()
            .ok()
            .map(DisconnectWho::Connection)),
        _ => Err(ApiError::invalid(
            "who",
            "a connection_id or a user is required",
        )),
    }
}

impl RouterService {
    /// Subscribes (or unsubscribes) a connection or a user's connections to a group, for a
    /// caller of `scope`.
    pub(crate) async fn subscribe_by_server(
        &self,
        scope: &Scope,
        req: SubscribeRequest,
        subscribe: bool,
    ) -> Result<SubscribeReply, ApiError> {
        let project = self.project(scope, &req.project)?;
        let group = GroupId::new(&req.group).map_err(|e| ApiError::invalid("group", e))?;
        let who = match req.who {
            Some(subscribe_request::Who::User(u)) => parse_who(Some(u), None)?,
            Some(subscribe_request::Who::ConnectionId(c)) => parse_who(None, Some(c))?,
            None => parse_who(None, None)?,
        };
        let Some(who) = who else {
            return Ok(SubscribeReply::default());
        };
        let outcome = self
            .control(ControlRequest::Subscribe {
                project,
                who,
                group,
                subscribe,
            })
            .await?;
        let mut reply = SubscribeReply {
            missing_edges: missing(&outcome),
            ..Default::default()
        };
        for (_, r) in &outcome.replies {
            if let ControlReply::Subscribed(s) = r {
                reply.changed += s.changed;
                reply.unchanged += s.unchanged;
                reply.refused += s.refused;
            }
        }
        Ok(reply)
    }
}

fn missing(outcome: &ControlOutcome) -> Vec<String> {
    outcome.missing.iter().map(|e| e.to_string()).collect()
}

/// gRPC metadata as a carrier of a caller's trace context.
struct Metadata<'a>(&'a MetadataMap);

impl trace::Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<PublishStreamReply, Status>> + Send>>;

#[tonic::async_trait]
impl Herald for RouterService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let scope = self.authenticate(&request)?;
        if trace::enabled() {
            // The caller's trace context (`traceparent` metadata), the publish span's parent.
            let parent = trace::extract_from(&Metadata(request.metadata()));
            let reply = self
                .publish_one(&scope, request.into_inner())
                .with_context(parent)
                .await?;
            return Ok(Response::new(reply));
        }
        Ok(Response::new(
            self.publish_one(&scope, request.into_inner()).await?,
        ))
    }

    type PublishStreamStream = AckStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let scope = self.authenticate(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            loop {
                // Acks leave as soon as no further message is already waiting.
                let next = match inbound.message().now_or_never() {
                    Some(next) => next,
                    None => {
                        if !acks.is_empty() {
                            let batch = PublishStreamReply {
                                acks: std::mem::take(&mut acks),
                            };
                            if tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                        inbound.message().await
                    }
                };
                match next {
                    Ok(Some(m)) => {
                        acks.push(this.publish_streamed(&scope, m).await);
                        if acks.len() >= MAX_ACK_BATCH {
                            let batch = PublishStreamReply {
                                acks: std::mem::take(&mut acks),
                            };
                            if tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        if !acks.is_empty() {
                            let _ = tx.send(Ok(PublishStreamReply { acks })).await;
                        }
                        return;
                    }
                    Err(status) => {
                        // A broken inbound stream (undecodable or oversized message, a reset)
                        // ends the call with its status, never with OK.
                        if !acks.is_empty() {
                            let _ = tx.send(Ok(PublishStreamReply { acks })).await;
                        }
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn count_connections(
        &self,
        request: Request<CountConnectionsRequest>,
    ) -> Result<Response<CountConnectionsReply>, Status> {
        let scope = self.authenticate(&request)?;
        Ok(Response::new(
            self.count(&scope, request.into_inner()).await?,
        ))
    }

    async fn list_connections(
        &self,
        request: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsReply>, Status> {
        let scope = self.authenticate(&request)?;
        Ok(Response::new(
            self.list(&scope, request.into_inner()).await?,
        ))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceReply>, Status> {
        let scope = self.authenticate(&request)?;
        Ok(Response::new(
            self.presence(&scope, request.into_inner()).await?,
        ))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let scope = self.authenticate(&request)?;
        Ok(Response::new(
            self.kick(&scope, request.into_inner()).await?,
        ))
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeReply>, Status> {
        let scope = self.authenticate(&request)?;
        Ok(Response::new(
            self.subscribe_by_server(&scope, request.into_inner(), true)
                .await?,
        ))
    }

    async fn unsubscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeReply>, Status> {
        let scope = self.authenticate(&request)?;
        Ok(Response::new(
            self.subscribe_by_server(&scope, request.into_inner(), false)
                .await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use herald_core::bus::{EdgeHandler, MemoryBus, Presence};
    use herald_core::history::MemoryHistory;
    use herald_core::projects::ProjectConfig;
    use herald_core::proto::v1::{Broadcast, ConnectionInfo, Target};
    use herald_core::registry::{InterestChange, Liveness, MemoryRegistry, RegistryError};
    use std::sync::Mutex;
    use tonic::Code;

    const ALPHA: &str = "alpha-key";
    const BETA: &str = "beta-key";
    const ADMIN: &str = "admin-key";

    /// An edge on the bus: records envelopes, answers calls with one connection of `alpha`.
    #[derive(Default)]
    struct Edge {
        got: Mutex<Vec<Envelope>>,
    }

    impl EdgeHandler for Edge {
        fn deliver(&self, envelope: &Envelope) {
            self.got.lock().expect("lock").push(envelope.clone());
        }
        fn control(&self, request: &ControlRequest) -> ControlReply {
            match request {
                ControlRequest::Count { project } => {
                    ControlReply::Count(match project.as_ref().map(ProjectId::as_str) {
                        None | Some("alpha") => HashMap::from([("alpha".to_string(), 1)]),
                        Some(_) => HashMap::new(),
                    })
                }
                ControlRequest::List { .. } => ControlReply::List(vec![ConnectionInfo {
                    id: "e1-1".into(),
                    ..Default::default()
                }]),
                ControlRequest::Disconnect { .. } => ControlReply::Disconnected(1),
                ControlRequest::Presence { .. } => ControlReply::Presence(Presence {
                    users: vec![("u".into(), 1)],
                    connections: 1,
                    users_total: 1,
                }),
                ControlRequest::Stats => ControlReply::Stats(HashMap::from([
                    (
                        "alpha".to_string(),
                        ProjectStats {
                            connections: 1,
                            messages: 5,
                            deliveries: 7,
                        },
                    ),
                    ("beta".to_string(), ProjectStats::default()),
                ])),
                ControlRequest::Subscribe { .. } => {
                    ControlReply::Subscribed(herald_core::bus::Subscribed {
                        changed: 1,
                        ..Default::default()
                    })
                }
            }
        }
    }

    /// A registry whose backend is down.
    struct Down;

    fn down<T>() -> Result<T, RegistryError> {
        Err(RegistryError::Unavailable("down".into()))
    }

    #[async_trait]
    impl Registry for Down {
        async fn heartbeat(&self, _: &EdgeId) -> Result<Liveness, RegistryError> {
            down()
        }
        async fn update(&self, _: &EdgeId, _: &[InterestChange]) -> Result<(), RegistryError> {
            down()
        }
        async fn resync(&self, _: &EdgeId, _: &[InterestKey]) -> Result<(), RegistryError> {
            down()
        }
        async fn deregister(&self, _: &EdgeId) -> Result<(), RegistryError> {
            down()
        }
        async fn edges_for(&self, _: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
            down()
        }
        async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
            down()
        }
        async fn claim_idempotency_key(
            &self,
            _: &ProjectId,
            _: &str,
            _: Duration,
        ) -> Result<bool, RegistryError> {
            down()
        }
        async fn release_idempotency_key(
            &self,
            _: &ProjectId,
            _: &str,
        ) -> Result<(), RegistryError> {
            down()
        }
    }

    /// A bus that accepts nothing.
    struct DeadBus;

    #[async_trait]
    impl Bus for DeadBus {
        async fn publish(&self, _: Destination<'_>, _: &Envelope) -> Result<(), BusError> {
            Err(BusError::Unavailable("dead".into()))
        }
        async fn attach(&self, _: EdgeId, _: Arc<dyn EdgeHandler>) -> Result<(), BusError> {
            Ok(())
        }
        async fn control(
            &self,
            _: &ControlRequest,
            _: &[EdgeId],
            _: Duration,
        ) -> Result<ControlOutcome, BusError> {
            Err(BusError::Unavailable("dead".into()))
        }
    }

    fn keys() -> Arc<ArcSwap<ApiKeys>> {
        let project = |id: &str, key: &str| ProjectConfig {
            id: id.into(),
            api_keys: vec![key.into()],
            keys: Vec::new(),
            limits: Default::default(),
            client_certificates: None,
            history: None,
            permessage_deflate: false,
            jwks: None,
            presence_events: false,
            webhook: None,
        };
        Arc::new(ArcSwap::from_pointee(ApiKeys::new(
            &[project("alpha", ALPHA), project("beta", BETA)],
            &[ADMIN.to_string()],
        )))
    }

    fn service(registry: Arc<dyn Registry>, bus: Arc<dyn Bus>) -> RouterService {
        let cfg = RouterConfig {
            max_payload_bytes: 100,
            ..RouterConfig::default()
        };
        RouterService::new(cfg, keys(), registry, bus, Arc::new(MemoryHistory::new()))
    }

    fn edge(s: &str) -> EdgeId {
        EdgeId::new(s).expect("edge")
    }

    /// A service over an in-memory registry and bus with edges e1 and e2 attached and alive.
    async fn sandbox() -> (RouterService, Arc<MemoryRegistry>, [Arc<Edge>; 2]) {
        let registry = Arc::new(MemoryRegistry::new());
        let bus = Arc::new(MemoryBus::new());
        let edges = [Arc::new(Edge::default()), Arc::new(Edge::default())];
        for (name, handler) in ["e1", "e2"].into_iter().zip(&edges) {
            registry.heartbeat(&edge(name)).await.expect("heartbeat");
            bus.attach(edge(name), handler.clone())
                .await
                .expect("attach");
        }
        (service(registry.clone(), bus), registry, edges)
    }

    fn req<T>(key: Option<&str>, body: T) -> Request<T> {
        let mut r = Request::new(body);
        if let Some(k) = key {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {k}").parse().expect("ascii"),
            );
        }
        r
    }

    fn publish(project: &str, target: target::Kind, payload: &str) -> PublishRequest {
        PublishRequest {
            project: project.into(),
            target: Some(Target { kind: Some(target) }),
            payload: payload.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn group(g: &str) -> target::Kind {
        target::Kind::Group(g.into())
    }

    async fn refused(svc: &RouterService, key: Option<&str>, p: PublishRequest) -> (Code, String) {
        let s = svc.publish(req(key, p)).await.expect_err("refused");
        (s.code(), s.message().to_string())
    }

    #[tokio::test]
    async fn a_target_goes_to_the_edges_holding_it_once_each() {
        let (svc, registry, [e1, e2]) = sandbox().await;
        let news = InterestKey::Group(
            ProjectId::new("alpha").expect("p"),
            GroupId::new("news").expect("g"),
        );
        let r = svc
            .publish(req(Some(ALPHA), publish("alpha", group("news"), "1")))
            .await
            .expect("published")
            .into_inner();
        assert_eq!(
            (r.resolution, r.edges),
            (Resolution::NoRecipients as i32, 0)
        );
        registry
            .update(&edge("e2"), &[InterestChange::Add(news.clone())])
            .await
            .expect("update");
        // An edge the registry names but the bus does not know is skipped.
        registry
            .update(&edge("e9"), &[InterestChange::Add(news)])
            .await
            .expect("update");
        let r = svc
            .publish(req(Some(ALPHA), publish("alpha", group("news"), "2")))
            .await
            .expect("published")
            .into_inner();
        assert_eq!((r.resolution, r.edges), (Resolution::Delivered as i32, 1));
        assert!(e1.got.lock().expect("lock").is_empty());
        let got = e2.got.lock().expect("lock").clone();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].project.as_str(),
                got[0].kind(),
                got[0].name.as_str(),
                got[0].payload.as_slice()
            ),
            ("alpha", TargetKind::Group, "news", &b"2"[..])
        );
        assert_eq!(got[0].message_id, r.message_id);

        // A broadcast reaches every edge and counts the live ones.
        let r = svc
            .publish(req(
                Some(ADMIN),
                publish("beta", target::Kind::Broadcast(Broadcast {}), "3"),
            ))
            .await
            .expect("published")
            .into_inner();
        assert_eq!((r.resolution, r.edges), (Resolution::Delivered as i32, 2));
        assert_eq!(e1.got.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_delivered_once_and_released_when_not_handed_on() {
        let registry = Arc::new(MemoryRegistry::new());
        let dead = service(registry.clone(), Arc::new(DeadBus));
        let mut p = publish("alpha", target::Kind::Broadcast(Broadcast {}), "1");
        p.idempotency_key = "k1".into();
        let s = dead
            .publish(req(Some(ALPHA), p.clone()))
            .await
            .expect_err("dead bus");
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "bus unavailable: dead")
        );
        // The failed publish released its key: the retry through a working bus is delivered.
        let live = service(registry, Arc::new(MemoryBus::new()));
        let first = live
            .publish(req(Some(ALPHA), p.clone()))
            .await
            .expect("ok")
            .into_inner();
        assert_eq!(first.resolution, Resolution::Delivered as i32);
        let again = live
            .publish(req(Some(ALPHA), p))
            .await
            .expect("ok")
            .into_inner();
        assert_eq!(again.resolution, Resolution::Duplicate as i32);
    }

    #[tokio::test]
    async fn requests_are_validated_with_the_field_named() {
        let (svc, _, [e1, e2]) = sandbox().await;
        let mut long_key = publish("alpha", group("g"), "1");
        long_key.idempotency_key = "k".repeat(129);
        let mut bad_event = publish("alpha", group("g"), "1");
        bad_event.event = "a b".into();
        let cases = [
            (
                None,
                publish("alpha", group("g"), "1"),
                Code::Unauthenticated,
                "missing authorization: Bearer <api key>",
            ),
            (
                Some("nope"),
                publish("alpha", group("g"), "1"),
                Code::Unauthenticated,
                "unknown API key",
            ),
            (
                Some(BETA),
                publish("alpha", group("g"), "1"),
                Code::PermissionDenied,
                "this API key does not belong to that project",
            ),
            (
                Some(ADMIN),
                publish("gamma", group("g"), "1"),
                Code::NotFound,
                "unknown project \"gamma\"",
            ),
            (
                Some(ALPHA),
                publish("Alpha", group("g"), "1"),
                Code::InvalidArgument,
                &format!(
                    "project: project id holds a character outside {}",
                    ProjectId::ALPHABET
                ),
            ),
            (
                Some(ALPHA),
                PublishRequest {
                    project: "alpha".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
                "target: required (broadcast, group or user)",
            ),
            (
                Some(ALPHA),
                publish("alpha", group("a.*"), "1"),
                Code::InvalidArgument,
                &format!(
                    "target.group: group name holds a character outside {}",
                    GroupId::ALPHABET
                ),
            ),
            (
                Some(ALPHA),
                publish("alpha", target::Kind::User(String::new()), "1"),
                Code::InvalidArgument,
                "target.user: user id is empty",
            ),
            (
                Some(ALPHA),
                publish("alpha", group("g"), &"x".repeat(101)),
                Code::InvalidArgument,
                "payload: 101 bytes, more than the limit of 100",
            ),
            (
                Some(ALPHA),
                bad_event,
                Code::InvalidArgument,
                "event: at most 64 characters of [A-Za-z0-9_.:-]",
            ),
            (
                Some(ALPHA),
                long_key,
                Code::InvalidArgument,
                "idempotency_key: longer than 128 bytes",
            ),
        ];
        for (key, p, code, message) in cases {
            assert_eq!(refused(&svc, key, p).await, (code, message.to_string()));
        }
        assert!(e1.got.lock().expect("lock").is_empty());
        assert!(e2.got.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_registry_outage_sends_targets_to_every_edge() {
        let bus = Arc::new(MemoryBus::new());
        let e1 = Arc::new(Edge::default());
        bus.attach(edge("e1"), e1.clone()).await.expect("attach");
        let svc = service(Arc::new(Down), bus);
        // A group target goes by the project's broadcast path, still a group message.
        let r = svc
            .publish(req(Some(ALPHA), publish("alpha", group("g"), "1")))
            .await
            .expect("delivered by the broadcast path")
            .into_inner();
        assert_eq!(
            (r.resolution(), r.edges, r.fallback),
            (Resolution::Delivered, 0, true)
        );
        {
            let got = e1.got.lock().expect("lock");
            assert_eq!(got.len(), 1);
            assert_eq!(
                (got[0].kind(), got[0].name.as_str()),
                (TargetKind::Group, "g")
            );
        }
        // An idempotency key needs the registry: refused, never delivered twice.
        let mut keyed = publish("alpha", group("g"), "2");
        keyed.idempotency_key = "k1".into();
        let (code, message) = refused(&svc, Some(ALPHA), keyed).await;
        assert_eq!(
            (code, message.as_str()),
            (Code::Unavailable, "registry unavailable: down")
        );
        let r = svc
            .publish(req(
                Some(ALPHA),
                publish("alpha", target::Kind::Broadcast(Broadcast {}), "3"),
            ))
            .await
            .expect("a broadcast needs no registry")
            .into_inner();
        assert_eq!(
            (r.resolution(), r.edges, r.fallback),
            (Resolution::Delivered, 0, false)
        );
        assert_eq!(e1.got.lock().expect("lock").len(), 2);
        let s = svc
            .count_connections(req(Some(ALPHA), CountConnectionsRequest::default()))
            .await
            .expect_err("no live edges");
        assert_eq!(s.code(), Code::Unavailable);
    }

    /// A registry that says it is being rebuilt.
    struct Rebuilding(Arc<MemoryRegistry>);

    #[async_trait::async_trait]
    impl Registry for Rebuilding {
        async fn heartbeat(&self, e: &EdgeId) -> Result<Liveness, RegistryError> {
            self.0.heartbeat(e).await
        }
        async fn update(&self, e: &EdgeId, c: &[InterestChange]) -> Result<(), RegistryError> {
            self.0.update(e, c).await
        }
        async fn resync(&self, e: &EdgeId, k: &[InterestKey]) -> Result<(), RegistryError> {
            self.0.resync(e, k).await
        }
        async fn deregister(&self, e: &EdgeId) -> Result<(), RegistryError> {
            self.0.deregister(e).await
        }
        async fn edges_for(&self, k: &InterestKey) -> Result<Vec<EdgeId>, RegistryError> {
            self.0.edges_for(k).await
        }
        async fn resolve(&self, _: &InterestKey) -> Result<Route, RegistryError> {
            Ok(Route::Incomplete("rebuilding".into()))
        }
        async fn live_edges(&self) -> Result<Vec<EdgeId>, RegistryError> {
            self.0.live_edges().await
        }
        async fn claim_idempotency_key(
            &self,
            p: &ProjectId,
            k: &str,
            w: Duration,
        ) -> Result<bool, RegistryError> {
            self.0.claim_idempotency_key(p, k, w).await
        }
        async fn release_idempotency_key(
            &self,
            p: &ProjectId,
            k: &str,
        ) -> Result<(), RegistryError> {
            self.0.release_idempotency_key(p, k).await
        }
    }

    #[tokio::test]
    async fn an_incomplete_registry_sends_targets_to_every_edge_and_says_so() {
        let registry = Arc::new(MemoryRegistry::new());
        let bus = Arc::new(MemoryBus::new());
        let edges = [Arc::new(Edge::default()), Arc::new(Edge::default())];
        for (name, handler) in ["e1", "e2"].iter().zip(&edges) {
            registry.heartbeat(&edge(name)).await.expect("heartbeat");
            bus.attach(edge(name), handler.clone())
                .await
                .expect("attach");
        }
        // Only e1 holds alice, but the registry cannot vouch for that: both edges get it.
        registry
            .update(
                &edge("e1"),
                &[InterestChange::Add(InterestKey::User(
                    ProjectId::new("alpha").expect("valid"),
                    "alice".parse().expect("valid"),
                ))],
            )
            .await
            .expect("update");
        let svc = service(Arc::new(Rebuilding(registry)), bus);
        for target in [
            target::Kind::User("alice".into()),
            target::Kind::User("nobody".into()),
        ] {
            let r = svc
                .publish(req(Some(ALPHA), publish("alpha", target, "1")))
                .await
                .expect("delivered")
                .into_inner();
            assert_eq!(
                (r.resolution(), r.edges, r.fallback),
                (Resolution::Delivered, 2, true)
            );
        }
        for e in &edges {
            let got = e.got.lock().expect("lock");
            assert_eq!(got.len(), 2);
            assert!(got.iter().all(|m| m.kind() == TargetKind::User));
        }
    }

    #[tokio::test]
    async fn operator_calls_gather_every_edge_and_name_the_missing() {
        let (svc, registry, _) = sandbox().await;
        // e3 is alive in the registry but not on the bus: it cannot answer.
        registry.heartbeat(&edge("e3")).await.expect("heartbeat");
        let count = svc
            .count_connections(req(Some(ADMIN), CountConnectionsRequest::default()))
            .await
            .expect("count")
            .into_inner();
        assert_eq!(
            count.connections,
            HashMap::from([("alpha".into(), 2), ("beta".into(), 0)])
        );
        assert_eq!(count.missing_edges, ["e3"]);
        // A project key counts its own project when none is named.
        let own = svc
            .count_connections(req(Some(BETA), CountConnectionsRequest::default()))
            .await
            .expect("count")
            .into_inner();
        assert_eq!(own.connections, HashMap::from([("beta".into(), 0)]));
        // Stats: per edge, a project key sees its project only.
        let (mut edges, missing) = svc.stats(&Scope::Admin).await.expect("stats");
        edges.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(missing, ["e3"]);
        assert_eq!(edges.len(), 2);
        assert_eq!(edges[0].1["alpha"].deliveries, 7);
        assert!(edges[0].1.contains_key("beta"));
        let (edges, _) = svc
            .stats(&Scope::Project("beta".into()))
            .await
            .expect("stats");
        assert!(
            edges.iter().all(|(_, p)| p.keys().eq(["beta"])),
            "{edges:?}"
        );

        let list = svc
            .list_connections(req(
                Some(ALPHA),
                ListConnectionsRequest {
                    project: "alpha".into(),
                    of: Some(list_connections_request::Of::Group("news".into())),
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(list.connections.len(), 2);
        let s = svc
            .list_connections(req(
                Some(ALPHA),
                ListConnectionsRequest {
                    project: "alpha".into(),
                    of: None,
                    ..Default::default()
                },
            ))
            .await
            .expect_err("no of");
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "of: a user or a group is required")
        );

        let kick = |who| {
            req(
                Some(ALPHA),
                DisconnectRequest {
                    project: "alpha".into(),
                    who,
                    reconnect_after_ms: 0,
                },
            )
        };
        let r = svc
            .disconnect(kick(Some(disconnect_request::Who::User("alice".into()))))
            .await
            .expect("disconnect")
            .into_inner();
        assert_eq!(
            (r.disconnected, r.missing_edges.as_slice()),
            (2, &["e3".to_string()][..])
        );
        // A malformed connection id names no connection: nothing is asked, nothing closed.
        let r = svc
            .disconnect(kick(Some(disconnect_request::Who::ConnectionId(
                "nonsense".into(),
            ))))
            .await
            .expect("disconnect")
            .into_inner();
        assert_eq!((r.disconnected, r.missing_edges.len()), (0, 0));
        let r = svc
            .disconnect(kick(Some(disconnect_request::Who::ConnectionId(
                "e1-1".into(),
            ))))
            .await
            .expect("disconnect")
            .into_inner();
        assert_eq!(r.disconnected, 2);
        for who in [
            None,
            Some(disconnect_request::Who::ConnectionId(String::new())),
        ] {
            let s = svc.disconnect(kick(who)).await.expect_err("no who");
            assert_eq!(
                (s.code(), s.message()),
                (
                    Code::InvalidArgument,
                    "who: a connection_id or a user is required"
                )
            );
        }
    }

    /// An edge from before paging: answers every connection it has, whatever the cursor.
    struct Unpaged(&'static str, u64);

    impl EdgeHandler for Unpaged {
        fn deliver(&self, _: &Envelope) {}
        fn control(&self, _: &ControlRequest) -> ControlReply {
            ControlReply::List(
                (1..=self.1)
                    .rev()
                    .map(|n| ConnectionInfo {
                        id: format!("{}-{n}", self.0),
                        ..Default::default()
                    })
                    .collect(),
            )
        }
    }

    /// An edge holding a group's users with these connection counts (answering as a hub does:
    /// after the cursor, in id order, at most the limit).
    struct Members(Vec<(&'static str, u32)>);

    impl EdgeHandler for Members {
        fn deliver(&self, _: &Envelope) {}
        fn control(&self, request: &ControlRequest) -> ControlReply {
            let ControlRequest::Presence { after, limit, .. } = request else {
                return ControlReply::Disconnected(0);
            };
            let mut users: Vec<(String, u32)> = self
                .0
                .iter()
                .filter(|(u, _)| after.as_ref().is_none_or(|a| *u > a.as_str()))
                .map(|&(u, n)| (u.to_string(), n))
                .collect();
            users.sort();
            users.truncate(limit.map_or(usize::MAX, |l| l as usize));
            ControlReply::Presence(Presence {
                users,
                connections: self.0.iter().map(|(_, n)| u64::from(*n)).sum(),
                users_total: self.0.len() as u64,
            })
        }
    }

    #[tokio::test]
    async fn presence_pages_name_each_user_once_with_every_edge_s_connections() {
        let registry = Arc::new(MemoryRegistry::new());
        let bus = Arc::new(MemoryBus::new());
        let edges = [
            ("e1", vec![("a", 1), ("c", 2), ("d", 1), ("f", 1)]),
            ("e2", vec![("b", 1), ("c", 1), ("e", 3), ("f", 1), ("g", 1)]),
            ("e3", vec![("h", 2)]),
        ];
        for (name, users) in edges {
            registry.heartbeat(&edge(name)).await.expect("heartbeat");
            bus.attach(edge(name), Arc::new(Members(users)))
                .await
                .expect("attach");
        }
        let svc = service(registry, bus);
        let presence = async |page_size, page_token: &str| {
            <RouterService as Herald>::presence(
                &svc,
                req(
                    Some(ALPHA),
                    PresenceRequest {
                        project: "alpha".into(),
                        group: "g".into(),
                        page_size,
                        page_token: page_token.into(),
                    },
                ),
            )
            .await
            .map(Response::into_inner)
        };
        let want = [
            ("a", 1),
            ("b", 1),
            ("c", 3),
            ("d", 1),
            ("e", 3),
            ("f", 2),
            ("g", 1),
            ("h", 2),
        ];
        // One page: every user once, the count exact.
        let r = presence(0, "").await.expect("presence");
        let got: Vec<(&str, u32)> = r
            .users
            .iter()
            .map(|u| (u.user.as_str(), u.connections))
            .collect();
        assert_eq!(got, want);
        assert_eq!((r.connections, r.users_total, r.users_exact), (14, 8, true));
        assert!(r.next_page_token.is_empty() && r.missing_edges.is_empty());
        // Pages of 3 and of 2: the same users, once each, in order.
        for size in [2, 3] {
            let (mut token, mut seen, mut pages) = (String::new(), Vec::new(), 0);
            loop {
                let r = presence(size, &token).await.expect("page");
                assert!(r.users.len() <= size as usize);
                assert_eq!(r.connections, 14);
                // Across several edges without the whole group: an upper bound, said so.
                if !r.users_exact {
                    assert_eq!(r.users_total, 10);
                }
                seen.extend(r.users.into_iter().map(|u| (u.user, u.connections)));
                pages += 1;
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            let seen: Vec<(&str, u32)> = seen.iter().map(|(u, n)| (u.as_str(), *n)).collect();
            assert_eq!(seen, want, "pages of {size}");
            assert!(pages <= 8 / size as usize + 1, "{pages} pages of {size}");
        }
        let s = presence(3, "a.*").await.expect_err("not a token");
        assert_eq!(s.message(), "page_token: not a next_page_token");
        let s = presence(3, "").await.map(|_| ());
        assert!(s.is_ok());
    }

    #[tokio::test]
    async fn listing_pages_cover_every_edge_once_in_id_order() {
        let registry = Arc::new(MemoryRegistry::new());
        let bus = Arc::new(MemoryBus::new());
        // Attached in an order that is not the id order; edges that ignore the cursor.
        for (name, n) in [("e2", 4), ("e10", 3), ("e1", 5)] {
            registry.heartbeat(&edge(name)).await.expect("heartbeat");
            bus.attach(edge(name), Arc::new(Unpaged(name, n)))
                .await
                .expect("attach");
        }
        let svc = service(registry, bus);
        let list = async |page_size, page_token: &str| {
            svc.list_connections(req(
                Some(ALPHA),
                ListConnectionsRequest {
                    project: "alpha".into(),
                    of: Some(list_connections_request::Of::User("u".into())),
                    page_size,
                    page_token: page_token.into(),
                },
            ))
            .await
        };
        let mut token = String::new();
        let mut pages = Vec::new();
        loop {
            let r = list(5, &token).await.expect("page").into_inner();
            pages.push(
                r.connections
                    .iter()
                    .map(|c| c.id.clone())
                    .collect::<Vec<_>>(),
            );
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        let want: Vec<Vec<&str>> = vec![
            vec!["e1-1", "e1-2", "e1-3", "e1-4", "e1-5"],
            vec!["e10-1", "e10-2", "e10-3", "e2-1", "e2-2"],
            vec!["e2-3", "e2-4"],
        ];
        assert_eq!(pages, want);
        // A page that ends exactly at the last connection says so: no empty page after it.
        let r = list(12, "").await.expect("all").into_inner();
        assert_eq!((r.connections.len(), r.next_page_token.as_str()), (12, ""));
        let r = list(0, "").await.expect("default size").into_inner();
        assert_eq!(r.connections.len(), 12);
        let s = list(5, "e1-01").await.expect_err("not a token");
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "page_token: not a next_page_token")
        );
    }

    #[tokio::test]
    async fn stream_acks_carry_each_message_s_outcome() {
        let (svc, _, _) = sandbox().await;
        let scope = svc.authenticate(&req(Some(ALPHA), ())).expect("key");
        let m = |request_id, message| PublishStreamRequest {
            request_id,
            message,
        };
        let ok = svc
            .publish_streamed(&scope, m(7, Some(publish("alpha", group("g"), "1"))))
            .await;
        assert_eq!(ok.request_id, 7);
        assert_eq!(
            ok.reply.map(|r| r.resolution),
            Some(Resolution::NoRecipients as i32)
        );
        let other = svc
            .publish_streamed(&scope, m(8, Some(publish("beta", group("g"), "1"))))
            .await;
        assert_eq!(
            (other.request_id, other.error_code, other.reply),
            (8, Code::PermissionDenied as i32, None)
        );
        let empty = svc.publish_streamed(&scope, m(9, None)).await;
        assert_eq!(
            (empty.error_code, empty.error_message.as_str()),
            (Code::InvalidArgument as i32, "message: required")
        );
    }
}
