//! Admission: everything between an accepted socket and an authenticated client, whatever
//! protocol it speaks: the PROXY header, TLS, the upgrade request, the defences (address and
//! origin lists, rates, caps), the token (from the request, a client certificate, or the
//! protocol's own connect frame read by its codec).
//!
//! Every way a client is refused is one [`Refused`], which knows its HTTP status (before the
//! upgrade), its close code (after it) and its metric; what a connection counts against the
//! limits is held by one [`Counted`] guard that gives everything back when dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use herald_core::codes::CloseCode;
use herald_core::ids::{GroupId, ProjectId};
use herald_core::telemetry::{self, Timer};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{AuthError, Identity};
use crate::codec::{Codec, Form, Hello, HelloReader, HelloRefused, Wire};
use crate::config::EdgeConfig;
use crate::deflate::{Inflate, InflateError};
use crate::handshake::{self, HandshakeError, PathProject, SseRequest, Upgrade};
use crate::limits::{Limits, Refusal};
use crate::listener::{AddrSource, ClientAddr, ProxyProtocol, Stream};
use crate::sockjs;
use crate::sse::{Positions, SseLink};
use crate::transport::{Framing, Link, WriteQueue};
use crate::ws::{Reader, WsLink};
use crate::{Bound, Shared, proxy, tls};

/// Why a client was refused; one value answers it (HTTP status before the upgrade, close code
/// after it) and counts it.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The defences (address and origin lists, rates, caps): `herald_edge_refused_total`.
    Limit(Refusal),
    /// The upgrade request itself: `herald_edge_handshake_failures_total{reason="refused"}`.
    Handshake(HandshakeError),
    /// The token: `herald_edge_connects_total{result=<close code label>}`.
    Auth(AuthError),
    /// Any other refusal with a close code (too many connections of the user, a first frame too
    /// big): `herald_edge_connects_total{result=<label>}`.
    Close(CloseCode),
}

impl Refused {
    /// The HTTP status answering it before the upgrade.
    pub(crate) fn http_status(&self) -> http::StatusCode {
        match self {
            Refused::Limit(r) => r.status(),
            Refused::Handshake(e) => e.status(),
            Refused::Auth(_) | Refused::Close(_) => {
                http::StatusCode::from_u16(self.close_code().http_status())
                    .unwrap_or(http::StatusCode::BAD_REQUEST)
            }
        }
    }

    /// The close code answering it after the upgrade.
    pub(crate) fn close_code(&self) -> CloseCode {
        match self {
            Refused::Auth(e) => e.close_code(),
            Refused::Close(c) => *c,
            Refused::Limit(_) => CloseCode::TooManyConnections,
            Refused::Handshake(_) => CloseCode::ProtocolError,
        }
    }

    /// The body of the HTTP answer and the metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Refused::Limit(r) => r.label(),
            Refused::Handshake(_) => "refused",
            Refused::Auth(_) | Refused::Close(_) => self.close_code().label(),
        }
    }

    /// Counts it; a connect refusal under the `protocol` label given.
    pub(crate) fn count(&self, protocol: &'static str) {
        match self {
            Refused::Limit(r) => r.count(),
            Refused::Handshake(_) => {
                metrics::counter!("herald_edge_handshake_failures_total", "reason" => "refused")
                    .increment(1)
            }
            Refused::Auth(_) | Refused::Close(_) => metrics::counter!(
                "herald_edge_connects_total",
                "result" => self.label(),
                "protocol" => protocol
            )
            .increment(1),
        }
    }

    /// Answers it with an HTTP status (before the upgrade or the stream's start) and closes;
    /// counted under `protocol` (only the native protocol is authenticated before either).
    pub(crate) async fn answer_http(
        &self,
        shared: &Shared,
        tcp: &mut Stream,
        protocol: &'static str,
    ) {
        self.count(protocol);
        let body = match self {
            Refused::Handshake(e) => e.to_string(),
            Refused::Auth(_) | Refused::Close(_) => self.close_code().reason().to_string(),
            Refused::Limit(r) => r.label().to_string(),
        };
        let retry = match self {
            Refused::Limit(r) if r.retry() => Some(shared.cfg.limits.retry_after_secs),
            _ => None,
        };
        handshake::refuse_retry(tcp, self.http_status(), &body, retry).await;
    }
}

/// What a connection counts against the limits: its place under the edge's cap, its client
/// address, its project. Everything is given back when the guard is dropped, however the
/// connection ends.
pub(crate) struct Counted {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
    project: Option<ProjectId>,
}

impl Counted {
    /// A place under the edge's cap, or the refusal.
    pub(crate) fn socket(limits: &Arc<Limits>) -> Result<Self, Refusal> {
        limits.admit_socket()?;
        Ok(Self {
            limits: limits.clone(),
            ip: None,
            project: None,
        })
    }

    /// Counts a connection of `ip`.
    fn admit_ip(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.ip.is_none() {
            self.limits.admit_ip(ip)?;
            self.ip = Some(ip);
        }
        Ok(())
    }

    /// Counts a connection of `project` on this edge.
    fn enter_project(&mut self, project: &ProjectId) -> Result<(), Refusal> {
        if self.project.is_none() {
            if !self.limits.enter_project(project.as_str()) {
                return Err(Refusal::ProjectConnections);
            }
            self.project = Some(project.clone());
        }
        Ok(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.limits.release_socket();
        if let Some(ip) = self.ip {
            self.limits.release_ip(ip);
        }
        if let Some(p) = &self.project {
            self.limits.leave_project(p.as_str());
        }
    }
}

/// An authenticated client, ready for its session.
pub(crate) struct Admitted {
    /// The transport to the client (with, on a WebSocket that negotiated `permessage-deflate`,
    /// its inflater).
    pub(crate) link: Link,
    /// What is queued for it (on SockJS, framed for SockJS: the open frame, if not sent yet).
    pub(crate) q: WriteQueue,
    pub(crate) remote: SocketAddr,
    pub(crate) counted: Counted,
    pub(crate) project: ProjectId,
    pub(crate) identity: Identity,
    pub(crate) codec: Codec,
    /// Streams the client resumes.
    pub(crate) resume: Vec<crate::protocol::Since>,
    /// The device it names (native `auth` with `device`).
    pub(crate) device: Option<String>,
}

/// Answers a client refused at accept (the edge's cap), after reading its request within a
/// short deadline so the answer is not lost to a reset. On `wss` the answer needs the TLS
/// handshake first.
pub(crate) async fn shed(
    shared: Arc<Shared>,
    listener: Arc<Bound>,
    tcp: TcpStream,
    peer: SocketAddr,
    r: Refusal,
) {
    let wait = Duration::from_millis(shared.cfg.handshake_timeout_ms.min(2_000));
    match open(&listener, tcp, peer, Instant::now() + wait).await {
        Some((_, mut stream, _)) => {
            let _ = timeout(wait, handshake::read_request(&mut stream)).await;
            Refused::Limit(r)
                .answer_http(&shared, &mut stream, NATIVE)
                .await;
        }
        None => r.count(),
    }
}

/// Admits a client: `None` when it was refused (answered, counted and closed) or went away.
pub(crate) async fn admit(
    shared: &Shared,
    listener: &Bound,
    tcp: TcpStream,
    peer: SocketAddr,
    mut counted: Counted,
) -> Option<Admitted> {
    let started = Timer::start();
    let cfg = &shared.cfg;
    let handshake_deadline = Duration::from_millis(cfg.handshake_timeout_ms);
    // One deadline from the accept for everything before the request is whole (PROXY header and
    // TLS handshake included), however slowly the bytes trickle in.
    let request_deadline = Instant::now() + handshake_deadline;
    let (mut addr, mut stream, cert) = open(listener, tcp, peer, request_deadline).await?;
    let tcp = &mut stream;
    // The client address the limits count against: the peer's or a PROXY header's, known now;
    // behind a trusted HTTP proxy, the forwarded one, known once the request is read.
    let behind_http_proxy = !listener.cfg.forwarded_from.is_empty();
    if !behind_http_proxy && let Err(r) = counted.admit_ip(addr.ip()) {
        let wait = Duration::from_millis(cfg.handshake_timeout_ms.min(2_000));
        let _ = timeout(wait, handshake::read_request(tcp)).await;
        Refused::Limit(r).answer_http(shared, tcp, NATIVE).await;
        return None;
    }
    let mut up = match timeout_at(request_deadline, handshake::read_request(tcp)).await {
        Ok(Ok(up)) => up,
        Ok(Err(HandshakeError::Io(_))) => {
            metrics::counter!("herald_edge_handshake_failures_total", "reason" => "io")
                .increment(1);
            return None;
        }
        Err(_) => {
            // Slowloris: a request trickled in is cut at the deadline, however it trickles.
            metrics::counter!("herald_edge_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(client = %addr.client, error = %e, "upgrade refused");
            Refused::Handshake(e).answer_http(shared, tcp, NATIVE).await;
            return None;
        }
    };
    if behind_http_proxy {
        forwarded(&listener.cfg, &mut addr, &up);
    }
    let remote = addr.client;
    // The project is known from the path, except on `/mqtt` (from the protocol's connect frame).
    let path_project = match &up.project {
        PathProject::Id(p) => Some(p.clone()),
        _ => None,
    };
    let label = if up.sse.is_some() {
        Form::NativeSse.label()
    } else {
        NATIVE
    };
    if let Err(r) = check_client(shared, &mut counted, addr.ip(), path_project.as_ref(), &up) {
        tracing::debug!(%remote, reason = r.label(), "refused");
        r.answer_http(shared, tcp, label).await;
        return None;
    }
    if let Some(sse) = up.sse.take() {
        return admit_sse(
            shared,
            stream,
            cert,
            remote,
            counted,
            path_project,
            &up,
            sse,
        )
        .await;
    }
    // SockJS requests other than `websocket` are HTTP requests of a session: answered here, or
    // handed to their session's task, or the start of a new session over HTTP.
    let sockjs = up.sockjs.take();
    let mut verified = None;
    let mut q = WriteQueue::default();
    let mut link = match &sockjs {
        Some(req) if !req.is_websocket() => {
            let known = path_project
                .as_ref()
                .filter(|p| shared.keys.load().has_project(p.as_str()));
            let Some(p) = known else {
                metrics::counter!("herald_edge_sockjs_requests_total", "endpoint" => "unknown_project", "status" => "404")
                    .increment(1);
                handshake::refuse(tcp, http::StatusCode::NOT_FOUND, "unknown project").await;
                return None;
            };
            let settings = sockjs::http::Settings {
                max_message_bytes: cfg.max_message_bytes,
                disconnect_delay_ms: cfg.sockjs_disconnect_delay_ms,
                response_limit: cfg.sockjs_response_limit_bytes,
                deadline: Instant::now() + handshake_deadline,
            };
            let mut taken = Some(stream);
            let served = sockjs::http::serve(
                &shared.sockjs,
                &mut taken,
                p,
                req,
                up.origin.as_deref(),
                std::mem::take(&mut up.leftover),
                &settings,
            )
            .await;
            match served {
                sockjs::http::Served::Done => return None,
                sockjs::http::Served::Session(l, queue) => {
                    q = queue;
                    Link::Http(l)
                }
            }
        }
        _ => {
            if cfg.refuse_before_upgrade && up.wire.token_in_request() {
                let result = match &path_project {
                    Some(p) => authenticate(shared, p, up.token.as_deref(), cert.as_ref()).await,
                    None => Err(AuthError::UnknownProject),
                };
                match result {
                    Ok(id) => verified = Some(id),
                    Err(e) => {
                        Refused::Auth(e).answer_http(shared, tcp, NATIVE).await;
                        return None;
                    }
                }
            }
            // `permessage-deflate` where the project enables it: known here from the path only
            // (on `/mqtt` the project comes after the upgrade, which then declines it).
            up.deflate &= path_project
                .as_ref()
                .is_some_and(|p| shared.keys.load().permessage_deflate(p.as_str()));
            if timeout(handshake_deadline, handshake::accept(tcp, &mut up))
                .await
                .map_or(true, |r| r.is_err())
            {
                return None;
            }
            let mut inflate = up.deflate.then(|| {
                Box::new(Inflate::new(
                    cfg.max_message_bytes,
                    shared
                        .ws_config
                        .max_frame_size
                        .unwrap_or(cfg.max_message_bytes),
                ))
            });
            // Bytes that came with the request are the start of the first frames: filtered too.
            let mut leftover = std::mem::take(&mut up.leftover);
            let mut refused_early = None;
            if let Some(f) = inflate.as_deref_mut() {
                match f.filter(&mut leftover) {
                    Ok(n) => {
                        leftover.truncate(n);
                        let mut chunk = [0u8; 512];
                        while f.has_output() {
                            let n = f.take_output(&mut chunk);
                            leftover.extend_from_slice(&chunk[..n]);
                        }
                    }
                    Err(e) => {
                        leftover.clear();
                        refused_early = InflateError::of(&e).map(InflateError::close_code);
                    }
                }
            }
            // A client whose frames came with its request, or that speaks first (a connect
            // frame), is read at once; a native client's reader is made when it sends.
            let reader = (!leftover.is_empty() || !up.wire.token_in_request())
                .then(|| Reader::with_read(leftover, shared.ws_config));
            let mut link = Link::Ws(WsLink::new(
                stream,
                reader,
                // An inflater that failed is not used for the close.
                if refused_early.is_some() {
                    None
                } else {
                    inflate
                },
            ));
            if let Some(code) = refused_early {
                let r = Refused::Close(code);
                link.refuse(shared, &mut q, None, &r, up.wire.label()).await;
                return None;
            }
            if sockjs.is_some() {
                // SockJS's `websocket` transport: the codec's frames in SockJS frames.
                q = WriteQueue::new(Framing::SockJsWebSocket);
                q.push_framed(sockjs::frame::framed(
                    sockjs::frame::Framing::WebSocket,
                    sockjs::frame::OPEN,
                ));
            }
            link
        }
    };
    // A native client of an unknown project is refused at once, before any `auth` frame; the
    // other protocols are answered in their own terms, after their connect frame.
    if up.wire.token_in_request()
        && path_project
            .as_ref()
            .is_none_or(|p| !shared.keys.load().has_project(p.as_str()))
    {
        let r = Refused::Auth(AuthError::UnknownProject);
        link.refuse(shared, &mut q, None, &r, up.wire.label()).await;
        return None;
    }
    // The protocol's connect frame, when it has one or the native client sends `auth`.
    let needs_hello =
        !up.wire.token_in_request() || (verified.is_none() && up.token.is_none() && cert.is_none());
    let mut codec = None;
    let mut resume = Vec::new();
    let mut device = None;
    let mut token = up.token.take();
    let mut project = path_project;
    if needs_hello {
        let deadline = Duration::from_millis(cfg.auth_timeout_ms);
        let read = read_hello(&mut link, &mut q, up.wire, cfg, &shared.ws_config);
        let hello = timeout(deadline, read)
            .await
            .unwrap_or_else(|_| Err(HelloRefused::close(CloseCode::AuthRequired)));
        match hello {
            Ok(Hello {
                token: t,
                project: p,
                codec: c,
                resume: r,
                device: d,
            }) => {
                resume = r;
                device = d;
                token = t.or(token);
                if project.is_none() {
                    project = p;
                }
                codec = Some(c);
            }
            Err(refusal) => {
                let r = Refused::Close(refusal.code);
                let answer = refusal.answer;
                link.refuse(shared, &mut q, answer, &r, up.wire.label())
                    .await;
                return None;
            }
        }
    }
    let mut codec = codec.unwrap_or_else(|| Codec::plain(up.wire));
    // A project named only by the connect frame is checked against the defences now.
    if matches!(up.project, PathProject::FromConnect)
        && let Some(p) = &project
        && let Err(r) = check_client(shared, &mut counted, addr.ip(), Some(p), &up)
    {
        tracing::debug!(%remote, reason = r.label(), "refused");
        let answer = codec.refusal(r.close_code());
        link.refuse(shared, &mut q, answer, &r, up.wire.label())
            .await;
        return None;
    }
    let identity = match &project {
        None => Err(AuthError::UnknownProject),
        Some(_) if verified.is_some() => verified.ok_or(AuthError::Missing),
        Some(p) => authenticate(shared, p, token.as_deref(), cert.as_ref()).await,
    };
    let (identity, project) = match (identity, project) {
        (Ok(id), Some(p)) => (id, p),
        (Err(e), _) => {
            tracing::debug!(%remote, error = %e, "authentication refused");
            let r = Refused::Auth(e);
            let answer = codec.refusal(r.close_code());
            link.refuse(shared, &mut q, answer, &r, up.wire.label())
                .await;
            return None;
        }
        (Ok(_), None) => return None,
    };
    metrics::histogram!(telemetry::EDGE_HANDSHAKE_SECONDS, "protocol" => up.wire.label())
        .record(started.seconds());
    Some(Admitted {
        link,
        q,
        remote,
        counted,
        project,
        identity,
        codec,
        resume,
        device,
    })
}

/// Runs one token or certificate verification, timed in `herald_edge_auth_duration_seconds`.
fn timed(verify: impl FnOnce() -> Result<Identity, AuthError>) -> Result<Identity, AuthError> {
    let timer = Timer::start();
    let outcome = verify();
    let result = if outcome.is_ok() { "ok" } else { "refused" };
    metrics::histogram!(telemetry::EDGE_AUTH_SECONDS, "result" => result).record(timer.seconds());
    outcome
}

/// The `protocol` label of native WebSocket clients.
const NATIVE: &str = "native";

/// Admits a Server-Sent Events client: the token from the request (or a client certificate),
/// the groups it asks for checked against its `channels`, its `Last-Event-ID`; every refusal an
/// HTTP status, since the stream has not begun. The stream's head is queued, to go out with the
/// welcome once the session starts.
#[allow(clippy::too_many_arguments)]
async fn admit_sse(
    shared: &Shared,
    mut stream: Stream,
    cert: Option<tls::ClientCert>,
    remote: SocketAddr,
    counted: Counted,
    project: Option<ProjectId>,
    up: &Upgrade,
    sse: SseRequest,
) -> Option<Admitted> {
    let label = Form::NativeSse.label();
    let identity = match &project {
        Some(p) => authenticate(shared, p, up.token.as_deref(), cert.as_ref()).await,
        None => Err(AuthError::UnknownProject),
    };
    let (mut identity, project) = match (identity, project) {
        (Ok(id), Some(p)) => (id, p),
        (Err(e), _) => {
            tracing::debug!(%remote, error = %e, "authentication refused");
            Refused::Auth(e)
                .answer_http(shared, &mut stream, label)
                .await;
            return None;
        }
        (Ok(_), None) => return None,
    };
    let refused = sse_groups(shared, &project, &mut identity, sse.groups).err();
    let positions = match (&refused, sse.last_event_id) {
        (None, Some(id)) => {
            let max = crate::session::max_groups(shared, &project).saturating_add(2);
            Positions::parse(&id, max)
                .map_err(|e| Refused::Handshake(HandshakeError::BadRequest(e.to_string())))
        }
        _ => Ok(Positions::default()),
    };
    let mut positions = match (refused, positions) {
        (None, Ok(p)) => p,
        (Some(r), _) | (None, Err(r)) => {
            tracing::debug!(%remote, reason = r.label(), "sse request refused");
            r.answer_http(shared, &mut stream, label).await;
            return None;
        }
    };
    let resume = positions.resume(&identity.groups);
    let mut q = WriteQueue::new(Framing::EventStream);
    q.push_framed(crate::sse::response_head(up.origin.as_deref()));
    Some(Admitted {
        link: Link::Sse(SseLink::new(stream, positions)),
        q,
        remote,
        counted,
        project,
        identity,
        codec: Codec::Native(None),
        resume,
        device: None,
    })
}

/// Adds the groups a Server-Sent Events request asks for to the token's: each a valid name the
/// token's `channels` allow (else 400, 403), at most the connection's maximum of groups (else
/// 400).
fn sse_groups(
    shared: &Shared,
    project: &ProjectId,
    identity: &mut Identity,
    asked: Vec<String>,
) -> Result<(), Refused> {
    if asked.is_empty() {
        return Ok(());
    }
    for g in asked {
        let id = GroupId::new(&g)
            .map_err(|e| Refused::Handshake(HandshakeError::BadRequest(format!("groups: {e}"))))?;
        if !identity.may_subscribe(id.as_str()) {
            return Err(Refused::Close(CloseCode::Forbidden));
        }
        if !identity.groups.contains(&id) {
            identity.groups.push(id);
        }
    }
    if identity.groups.len() > crate::session::max_groups(shared, project) {
        metrics::counter!("herald_edge_subscribes_refused_total", "reason" => "too_many_groups")
            .increment(1);
        return Err(Refused::Handshake(HandshakeError::BadRequest(
            "groups: too many groups on this connection".into(),
        )));
    }
    Ok(())
}

/// Authenticates a client of `project` by its token, else by its verified certificate when the
/// project accepts them. A token with an unknown `kid` may wait for the project's JWK Set to be
/// fetched again (at most its fetch deadline).
async fn authenticate(
    shared: &Shared,
    project: &ProjectId,
    token: Option<&str>,
    cert: Option<&tls::ClientCert>,
) -> Result<Identity, AuthError> {
    let p = project.as_str();
    match (token, cert) {
        _ if !shared.keys.load().has_project(p) => Err(AuthError::UnknownProject),
        (Some(t), _) => {
            // Timed whole: a wait for a JWK Set refresh is part of what authentication costs.
            let timer = Timer::start();
            let outcome = crate::auth::verify_refreshing(&shared.keys, p, t).await;
            let result = if outcome.is_ok() { "ok" } else { "refused" };
            metrics::histogram!(telemetry::EDGE_AUTH_SECONDS, "result" => result)
                .record(timer.seconds());
            outcome
        }
        (None, Some(c)) if shared.keys.load().accepts_certificates(p) => {
            timed(|| shared.keys.load().verify_certificate(p, c))
        }
        (None, _) => Err(AuthError::Missing),
    }
}

/// Reads the protocol's connect frame: the client's first data messages, as many as it takes.
async fn read_hello(
    link: &mut Link,
    q: &mut WriteQueue,
    wire: Wire,
    cfg: &EdgeConfig,
    ws_config: &WebSocketConfig,
) -> Result<Hello, HelloRefused> {
    let mut reader = HelloReader::new(wire, cfg);
    loop {
        let m = link
            .read_first(q, ws_config)
            .await
            .map_err(HelloRefused::close)?;
        if let Some(hello) = reader.feed(m) {
            return hello;
        }
    }
}

/// The defences once the request is read: the client address (behind a trusted HTTP proxy, the
/// forwarded one), the project's address and origin lists, the project's cap on this edge.
fn check_client(
    shared: &Shared,
    counted: &mut Counted,
    ip: IpAddr,
    project: Option<&ProjectId>,
    up: &Upgrade,
) -> Result<(), Refused> {
    counted.admit_ip(ip).map_err(Refused::Limit)?;
    let Some(project) = project else {
        return Ok(());
    };
    // An unknown project is refused by authentication, with its own code.
    if !shared.keys.load().has_project(project.as_str()) {
        return Ok(());
    }
    shared
        .limits
        .policy()
        .check_request(project.as_str(), ip, up.origin.as_deref())
        .map_err(Refused::Limit)?;
    counted.enter_project(project).map_err(Refused::Limit)
}

/// The PROXY header (when the listener expects one) and the TLS handshake (on `wss`), both
/// before `deadline`: the client's address, the stream, and the verified client certificate if
/// one was presented. `None`: refused, counted and closed.
async fn open(
    listener: &Bound,
    mut tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(ClientAddr, Stream, Option<tls::ClientCert>)> {
    let _ = tcp.set_nodelay(true);
    let mut addr = ClientAddr::direct(peer);
    let lc = &listener.cfg;
    if lc.proxy_protocol != ProxyProtocol::Off {
        if !lc.proxy_trusted(peer.ip()) {
            metrics::counter!("herald_edge_proxy_protocol_refused_total", "reason" => "untrusted")
                .increment(1);
            tracing::debug!(%peer, "proxy protocol listener: untrusted source, closed");
            return None;
        }
        match timeout_at(deadline, proxy::read_header(&mut tcp, lc.proxy_protocol)).await {
            Ok(Ok(Some(client))) => {
                addr.client = client;
                addr.source = AddrSource::ProxyProtocol;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                metrics::counter!("herald_edge_proxy_protocol_refused_total", "reason" => e.label())
                    .increment(1);
                tracing::debug!(%peer, error = %e, "proxy protocol header refused");
                return None;
            }
            Err(_) => {
                metrics::counter!("herald_edge_proxy_protocol_refused_total", "reason" => "timeout")
                    .increment(1);
                return None;
            }
        }
    }
    let Some(tls) = &listener.tls else {
        return Some((addr, Stream::Plain(tcp), None));
    };
    match timeout_at(deadline, tls::refuse_legacy_hello(&mut tcp)).await {
        Ok(Ok(false)) => {}
        Ok(Ok(true)) => {
            metrics::counter!("herald_edge_tls_handshake_failures_total", "reason" => "version")
                .increment(1);
            tracing::debug!(client = %addr.client, "tls 1.0/1.1 client hello refused");
            return None;
        }
        Ok(Err(_)) | Err(_) => {
            metrics::counter!("herald_edge_tls_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            return None;
        }
    }
    match timeout_at(deadline, crate::tls_stream::accept(tcp, tls.config())).await {
        Ok(Ok(s)) => {
            let cert = tls::client_cert(s.state());
            Some((addr, Stream::Tls(Box::new(s)), cert))
        }
        Ok(Err(e)) => {
            metrics::counter!("herald_edge_tls_handshake_failures_total", "reason" => "refused")
                .increment(1);
            tracing::debug!(client = %addr.client, error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("herald_edge_tls_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            None
        }
    }
}

/// Behind a trusted HTTP proxy, the client its forwarded headers name.
fn forwarded(listener: &crate::listener::ListenerConfig, addr: &mut ClientAddr, up: &Upgrade) {
    let trusted = &listener.forwarded_from;
    if trusted.is_empty() || !crate::listener::contains(trusted, addr.client.ip()) {
        return;
    }
    let xff: Vec<&str> = up.forwarded_for.iter().map(String::as_str).collect();
    let ip = proxy::forwarded_client(addr.ip(), &xff, up.real_ip.as_deref(), trusted);
    if ip != addr.ip() {
        addr.client = SocketAddr::new(ip, 0);
        addr.source = AddrSource::Forwarded;
    }
}
