//! The `herald.v1.Herald` gRPC service.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use herald_core::bus::{
    Bus, BusError, ControlOutcome, ControlReply, ControlRequest, Destination, DisconnectWho, ListOf,
};
use herald_core::ids::{GroupId, ProjectId, UserId};
use herald_core::proto::bus::{ENVELOPE_VERSION, Envelope, TargetKind};
use herald_core::proto::v1::herald_server::Herald;
use herald_core::proto::v1::{
    CountConnectionsReply, CountConnectionsRequest, DisconnectReply, DisconnectRequest,
    ListConnectionsReply, ListConnectionsRequest, PublishAck, PublishReply, PublishRequest,
    PublishStreamReply, PublishStreamRequest, Resolution, disconnect_request,
    list_connections_request, target,
};
use herald_core::registry::{InterestKey, Registry, RegistryError};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::RouterConfig;
use crate::keys::{ApiKeys, Scope};

/// Most acks sent in one stream reply.
const MAX_ACK_BATCH: usize = 256;

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
    id_prefix: u32,
    next_id: AtomicU64,
}

fn registry_status(e: RegistryError) -> Status {
    Status::unavailable(e.to_string())
}

fn bus_status(e: BusError) -> Status {
    Status::unavailable(e.to_string())
}

fn invalid(field: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {e}"))
}

fn valid_event(e: &str) -> bool {
    e.len() <= 64
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl RouterService {
    /// A service resolving through `registry` and publishing on `bus`.
    pub fn new(
        cfg: RouterConfig,
        keys: Arc<ArcSwap<ApiKeys>>,
        registry: Arc<dyn Registry>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                keys,
                registry,
                bus,
                id_prefix: rand::random(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The largest gRPC message this service accepts.
    pub fn max_message_bytes(&self) -> usize {
        self.inner.cfg.max_payload_bytes + 64 * 1024
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Scope, Status> {
        self.inner.keys.load().authenticate(req.metadata())
    }

    /// Checks the project id, its existence and the key's right to it.
    fn project(&self, scope: &Scope, project: &str) -> Result<ProjectId, Status> {
        let id = ProjectId::new(project).map_err(|e| invalid("project", e))?;
        scope.allow(project)?;
        if !self.inner.keys.load().has_project(project) {
            return Err(Status::not_found(format!("unknown project {project:?}")));
        }
        Ok(id)
    }

    async fn publish_one(
        &self,
        scope: &Scope,
        req: PublishRequest,
    ) -> Result<PublishReply, Status> {
        let inner = &self.inner;
        let project = self.project(scope, &req.project)?;
        let target = req.target.and_then(|t| t.kind).ok_or_else(|| {
            Status::invalid_argument("target: required (broadcast, group or user)")
        })?;
        let (kind, name, key) = match target {
            target::Kind::Broadcast(_) => (TargetKind::Broadcast, String::new(), None),
            target::Kind::Group(g) => {
                let id = GroupId::new(&g).map_err(|e| invalid("target.group", e))?;
                (
                    TargetKind::Group,
                    g,
                    Some(InterestKey::Group(project.clone(), id)),
                )
            }
            target::Kind::User(u) => {
                let id = UserId::new(&u).map_err(|e| invalid("target.user", e))?;
                (
                    TargetKind::User,
                    u,
                    Some(InterestKey::User(project.clone(), id)),
                )
            }
        };
        if req.payload.len() > inner.cfg.max_payload_bytes {
            return Err(Status::invalid_argument(format!(
                "payload: {} bytes, more than the limit of {}",
                req.payload.len(),
                inner.cfg.max_payload_bytes
            )));
        }
        if !valid_event(&req.event) {
            return Err(invalid("event", "at most 64 characters of [A-Za-z0-9_.:-]"));
        }
        if req.idempotency_key.len() > 128 {
            return Err(invalid("idempotency_key", "longer than 128 bytes"));
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
                .await
                .map_err(registry_status)?;
            if !fresh {
                metrics::counter!("herald_router_publishes_total", "resolution" => "duplicate")
                    .increment(1);
                return Ok(PublishReply {
                    message_id,
                    resolution: Resolution::Duplicate as i32,
                    edges: 0,
                });
            }
        }
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            project: project.to_string(),
            kind: kind as i32,
            name,
            payload: req.payload,
            event: req.event,
            message_id: message_id.clone(),
            seq: 0,
            published_at_unix_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        };
        let handed = self.hand_off(&project, key.as_ref(), &envelope).await;
        let edges = match handed {
            Ok(edges) => edges,
            Err(status) => {
                if !req.idempotency_key.is_empty() {
                    // Not handed on: the publisher's retry must not count as a repeat.
                    let _ = inner
                        .registry
                        .release_idempotency_key(&project, &req.idempotency_key)
                        .await;
                }
                return Err(status);
            }
        };
        let resolution = if edges == 0 && key.is_some() {
            Resolution::NoRecipients
        } else {
            Resolution::Delivered
        };
        metrics::counter!("herald_router_publishes_total", "resolution" => if edges == 0 { "no_recipients" } else { "delivered" })
            .increment(1);
        Ok(PublishReply {
            message_id,
            resolution: resolution as i32,
            edges,
        })
    }

    /// Resolves the target and hands the envelope to every edge that must receive it; returns
    /// the number of edges.
    async fn hand_off(
        &self,
        project: &ProjectId,
        key: Option<&InterestKey>,
        envelope: &Envelope,
    ) -> Result<u32, Status> {
        let inner = &self.inner;
        match key {
            None => {
                inner
                    .bus
                    .publish(Destination::Broadcast(project), envelope)
                    .await
                    .map_err(bus_status)?;
                // A broadcast needs no lookup: it is delivered even while the registry is
                // unreachable; only the count of edges is then unknown (0).
                match inner.registry.live_edges().await {
                    Ok(edges) => Ok(edges.len() as u32),
                    Err(e) => {
                        tracing::warn!(error = %e, "broadcast sent; live edges unknown");
                        Ok(0)
                    }
                }
            }
            Some(key) => {
                let edges = inner
                    .registry
                    .edges_for(key)
                    .await
                    .map_err(registry_status)?;
                let mut sent = 0;
                for edge in &edges {
                    match inner.bus.publish(Destination::Edge(edge), envelope).await {
                        Ok(()) => sent += 1,
                        Err(BusError::UnknownEdge(e)) => {
                            tracing::debug!(edge = %e, "registry named an edge the bus does not know");
                        }
                        Err(e) => return Err(bus_status(e)),
                    }
                }
                Ok(sent)
            }
        }
    }

    async fn control(&self, req: ControlRequest) -> Result<ControlOutcome, Status> {
        let deadline = Duration::from_millis(self.inner.cfg.control_timeout_ms);
        // Without the live edges no reply could say who is missing: refuse rather than
        // silently undercount.
        let live = self
            .inner
            .registry
            .live_edges()
            .await
            .map_err(registry_status)?;
        self.inner
            .bus
            .control(&req, &live, deadline)
            .await
            .map_err(bus_status)
    }
}

fn missing(outcome: &ControlOutcome) -> Vec<String> {
    outcome.missing.iter().map(|e| e.to_string()).collect()
}

type AckStream = Pin<Box<dyn Stream<Item = Result<PublishStreamReply, Status>> + Send>>;

#[tonic::async_trait]
impl Herald for RouterService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let scope = self.authenticate(&request)?;
        self.publish_one(&scope, request.into_inner())
            .await
            .map(Response::new)
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
                        let request_id = m.request_id;
                        let ack = match m.message {
                            None => Err(Status::invalid_argument("message: required")),
                            Some(msg) => this.publish_one(&scope, msg).await,
                        };
                        acks.push(match ack {
                            Ok(reply) => PublishAck {
                                request_id,
                                reply: Some(reply),
                                ..Default::default()
                            },
                            Err(s) => PublishAck {
                                request_id,
                                reply: None,
                                error_code: s.code() as i32,
                                error_message: s.message().to_string(),
                            },
                        });
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
        let req = request.into_inner();
        let project = match (&scope, req.project.is_empty()) {
            (Scope::Admin, true) => None,
            (Scope::Project(p), true) => Some(self.project(&scope, &p.clone())?),
            (_, false) => Some(self.project(&scope, &req.project)?),
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
        Ok(Response::new(CountConnectionsReply {
            connections,
            missing_edges: missing(&outcome),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsReply>, Status> {
        let scope = self.authenticate(&request)?;
        let req = request.into_inner();
        let project = self.project(&scope, &req.project)?;
        let of = match req.of {
            Some(list_connections_request::Of::User(u)) => {
                ListOf::User(UserId::new(&u).map_err(|e| invalid("user", e))?)
            }
            Some(list_connections_request::Of::Group(g)) => {
                ListOf::Group(GroupId::new(&g).map_err(|e| invalid("group", e))?)
            }
            None => {
                return Err(Status::invalid_argument(
                    "of: a user or a group is required",
                ));
            }
        };
        let outcome = self.control(ControlRequest::List { project, of }).await?;
        let mut connections = Vec::new();
        for (_, reply) in &outcome.replies {
            if let ControlReply::List(list) = reply {
                connections.extend(list.iter().cloned());
            }
        }
        Ok(Response::new(ListConnectionsReply {
            connections,
            missing_edges: missing(&outcome),
        }))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let scope = self.authenticate(&request)?;
        let req = request.into_inner();
        let project = self.project(&scope, &req.project)?;
        let who = match req.who {
            Some(disconnect_request::Who::User(u)) => {
                DisconnectWho::User(UserId::new(&u).map_err(|e| invalid("user", e))?)
            }
            Some(disconnect_request::Who::ConnectionId(c)) if !c.is_empty() && c.len() <= 128 => {
                DisconnectWho::Connection(c)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "who: a connection_id or a user is required",
                ));
            }
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
        Ok(Response::new(DisconnectReply {
            disconnected,
            missing_edges: missing(&outcome),
        }))
    }
}
