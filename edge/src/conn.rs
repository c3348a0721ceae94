//! One client connection, from the accepted socket to its close.
//!
//! A single task per connection: it reads frames through tungstenite's [`WebSocketContext`]
//! (which parses and answers pings and closes) and writes pre-framed bytes itself, taking every
//! frame queued in the hub in one vectored write. No channel, no second task, no timer: the hub
//! holds the queue and its ticker handles pings and expiry.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use herald_core::codes::{CloseCode, FrameError};
use herald_core::ids::{GroupId, ProjectId, UserId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{AuthError, channels_allow};
use crate::handshake::{self, HandshakeError};
use crate::hub::{ConnHandle, JoinOutcome, NewConn, Outgoing};
use crate::limits::{MessageBucket, Refusal};
use crate::listener::{AddrSource, ClientAddr, ProxyProtocol, Stream};
use crate::protocol::{self, ClientFrame};
use crate::{Bound, Shared, proxy, tls};

/// Most frames written in one vectored write.
const MAX_IOVECS: usize = 64;

/// Gives tungstenite a synchronous, non-blocking view of the stream: reads come from the stream
/// (`WouldBlock` when it has nothing, with the task's waker registered), writes (pongs, close
/// frames) are collected for the connection's own writer.
struct Io<'a, 'b> {
    stream: &'a mut Stream,
    cx: &'a mut Context<'b>,
    out: &'a mut BytesMut,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.stream).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Frames on their way to the socket.
#[derive(Default)]
struct WriteQueue {
    frames: VecDeque<Bytes>,
    /// The first frame was partly written: it must be finished before anything else.
    partial: bool,
}

impl WriteQueue {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.frames.push_back(b);
        }
    }

    fn take_ctl(&mut self, ctl: &mut BytesMut) {
        if !ctl.is_empty() {
            self.push(std::mem::take(ctl).freeze());
        }
    }

    /// Drops every frame not yet started.
    fn discard_unsent(&mut self) {
        if self.partial {
            self.frames.truncate(1);
        } else {
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes, all queued frames in one call.
    fn poll_write(&mut self, tcp: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self
                .frames
                .iter()
                .zip(slices.iter_mut())
                .map(|(b, s)| *s = IoSlice::new(b))
                .count();
            let mut written = ready!(Pin::new(&mut *tcp).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while written > 0 {
                let Some(front) = self.frames.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.frames.pop_front();
                    self.partial = false;
                } else {
                    front.advance(written);
                    written = 0;
                    self.partial = true;
                }
            }
        }
        // TLS records rustls could not hand to the socket yet.
        ready!(Pin::new(&mut *tcp).poll_flush(cx))?;
        // Idle connections hold no buffer: the next batch brings its own.
        self.frames = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    async fn flush(&mut self, tcp: &mut Stream) -> io::Result<()> {
        poll_fn(|cx| self.poll_write(tcp, cx)).await
    }
}

/// A connection's task: a hand-written future of a few words, so every idle connection's tokio
/// task fits the smallest task cell. Everything else lives in the boxed [`Session`]; the rare
/// steps that must wait (the upgrade, a client frame, the close) run as boxed futures.
pub(crate) struct ConnTask {
    shared: Arc<Shared>,
    state: TaskState,
    /// What the connection counts against the limits; given back on drop.
    counted: Counted,
}

/// What a connection counts against the limits.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// Nothing (shed at accept).
    Nothing,
    /// A place under the global cap.
    Socket,
    /// That, and a connection of its client address.
    SocketAndIp(IpAddr),
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        match self.counted {
            Counted::Nothing => {}
            Counted::Socket => self.shared.limits.release_socket(),
            Counted::SocketAndIp(ip) => {
                self.shared.limits.release_socket();
                self.shared.limits.release_ip(ip);
            }
        }
    }
}

/// How a step ends: the session when the connection goes on, and (from the setup) the client
/// address once the connection counts against it.
struct Outcome {
    session: Option<Box<Session>>,
    admitted_ip: Option<IpAddr>,
}

type Step = Pin<Box<dyn Future<Output = Outcome> + Send>>;

enum TaskState {
    /// Waiting for a step; `Some(session)` when it ends means the connection goes on.
    Busy(Step),
    /// Reading frames and writing queued ones.
    Live(Box<Session>),
    Done,
}

impl ConnTask {
    /// A task serving one socket accepted on `listener` until it closes.
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: Arc<Bound>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Self {
        let _ = tcp.set_nodelay(true);
        let for_setup = shared.clone();
        let (step, counted): (Step, _) = match shared.limits.admit_socket() {
            Ok(()) => (
                Box::pin(async move { start(for_setup, listener, tcp, peer).await }),
                Counted::Socket,
            ),
            Err(r) => (
                Box::pin(async move {
                    // On `wss` the answer needs the TLS handshake first.
                    let deadline = tokio::time::Instant::now()
                        + Duration::from_millis(for_setup.cfg.handshake_timeout_ms.min(2_000));
                    match open(&listener, tcp, peer, deadline).await {
                        Some((_, mut stream, _)) => shed(&for_setup, &mut stream, r).await,
                        None => r.count(),
                    }
                    Outcome {
                        session: None,
                        admitted_ip: None,
                    }
                }),
                Counted::Nothing,
            ),
        };
        Self {
            shared,
            state: TaskState::Busy(step),
            counted,
        }
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                TaskState::Busy(step) => {
                    let out = ready!(step.as_mut().poll(cx));
                    if let Some(ip) = out.admitted_ip {
                        this.counted = Counted::SocketAndIp(ip);
                    }
                    match out.session {
                        Some(session) => this.state = TaskState::Live(session),
                        None => {
                            this.state = TaskState::Done;
                            return Poll::Ready(());
                        }
                    }
                }
                TaskState::Live(s) => {
                    let mut ev = ready!(poll_conn(
                        cx,
                        &this.shared,
                        s.handle,
                        &mut s.tcp,
                        &mut s.ctx,
                        &mut s.q,
                        &mut s.ctl
                    ));
                    if let Event::Message(m) = &ev {
                        if !this.shared.limits.take_message(&mut s.bucket) {
                            ev = Event::RateLimited;
                        } else {
                            this.shared.hub.touch(s.handle);
                            // Pings, pongs and the peer's close are answered by tungstenite.
                            if !matches!(m, Message::Text(_) | Message::Binary(_)) {
                                continue;
                            }
                        }
                    }
                    let TaskState::Live(session) =
                        std::mem::replace(&mut this.state, TaskState::Done)
                    else {
                        return Poll::Ready(());
                    };
                    let shared = this.shared.clone();
                    this.state = TaskState::Busy(Box::pin(async move {
                        Outcome {
                            session: step(shared, session, ev).await,
                            admitted_ip: None,
                        }
                    }));
                }
                TaskState::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Everything a live connection holds, in one allocation of exactly its size; the task's own
/// future stays a few words.
struct Session {
    tcp: Stream,
    ctx: WebSocketContext,
    q: WriteQueue,
    ctl: BytesMut,
    handle: ConnHandle,
    user: UserId,
    channels: Box<[Box<str>]>,
    project: ProjectId,
    /// Inbound frame rate.
    bucket: MessageBucket,
}

fn ws_close(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: code.reason().into(),
    }
}

/// Answers a client refused before its request was read (global cap, address lists, rates)
/// with its HTTP status, after reading its request within a short deadline so the answer is not
/// lost to a reset.
async fn shed(shared: &Shared, tcp: &mut Stream, r: Refusal) {
    r.count();
    let deadline = Duration::from_millis(shared.cfg.handshake_timeout_ms.min(2_000));
    let _ = timeout(deadline, handshake::read_request(tcp)).await;
    let retry = r.retry().then_some(shared.cfg.limits.retry_after_secs);
    handshake::refuse_retry(tcp, r.status(), r.label(), retry).await;
}

/// What a connection in setup counts against the limits beyond its socket.
#[derive(Default)]
struct Admitted {
    /// The client address, once admitted by [`crate::limits::Limits::admit_ip`].
    ip: Option<IpAddr>,
    /// The project, once counted against its cap.
    project: Option<String>,
}

/// Runs the setup of a connection; one that does not go live gives back its place in the
/// project's count (its address is given back by the task).
async fn start(
    shared: Arc<Shared>,
    listener: Arc<Bound>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Outcome {
    let mut admitted = Admitted::default();
    let session = setup(&shared, &listener, tcp, peer, &mut admitted).await;
    if session.is_none()
        && let Some(project) = admitted.project
    {
        shared.limits.leave_project(&project);
    }
    Outcome {
        session,
        admitted_ip: admitted.ip,
    }
}

/// Handshake and authentication: returns the session, or refuses and closes. `admitted` records
/// what the connection counts against the limits.
async fn setup(
    shared: &Shared,
    listener: &Bound,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: &mut Admitted,
) -> Option<Box<Session>> {
    let cfg = &shared.cfg;
    let handshake_deadline = Duration::from_millis(cfg.handshake_timeout_ms);
    // One deadline from the accept for everything before the request is whole (PROXY header and
    // TLS handshake included), however slowly the bytes trickle in.
    let request_deadline = tokio::time::Instant::now() + handshake_deadline;
    let (mut addr, mut stream, cert) = open(listener, tcp, peer, request_deadline).await?;
    let tcp = &mut stream;
    // The client address the limits count against: the peer's or a PROXY header's, known now;
    // behind a trusted HTTP proxy, the forwarded one, known once the request is read.
    let forwarded_from_proxy = !listener.cfg.forwarded_from.is_empty();
    if !forwarded_from_proxy {
        let ip = addr.ip();
        if let Err(r) = shared.limits.admit_ip(ip) {
            shed(shared, tcp, r).await;
            return None;
        }
        admitted.ip = Some(ip);
    }
    let mut up = match tokio::time::timeout_at(request_deadline, handshake::read_request(tcp)).await
    {
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
            metrics::counter!("herald_edge_handshake_failures_total", "reason" => "refused")
                .increment(1);
            tracing::debug!(client = %addr.client, error = %e, "upgrade refused");
            handshake::refuse(tcp, e.status(), &e.to_string()).await;
            return None;
        }
    };
    let ip = match admitted.ip {
        Some(ip) => ip,
        None => {
            forwarded(&listener.cfg, &mut addr, &up);
            let ip = addr.ip();
            if let Err(r) = shared.limits.admit_ip(ip) {
                r.count();
                tracing::debug!(client = %addr.client, reason = r.label(), "refused");
                let retry = r.retry().then_some(cfg.limits.retry_after_secs);
                handshake::refuse_retry(tcp, r.status(), r.label(), retry).await;
                return None;
            }
            admitted.ip = Some(ip);
            ip
        }
    };
    let remote = addr.client;
    let keys = shared.keys.load();
    if keys.has_project(&up.project) {
        let refused =
            match shared
                .limits
                .policy()
                .check_request(&up.project, ip, up.origin.as_deref())
            {
                Err(r) => Some(r),
                Ok(()) if !shared.limits.enter_project(&up.project) => {
                    Some(Refusal::ProjectConnections)
                }
                Ok(()) => {
                    admitted.project = Some(up.project.clone());
                    None
                }
            };
        if let Some(r) = refused {
            r.count();
            tracing::debug!(%remote, project = %up.project, reason = r.label(), "refused");
            let retry = r.retry().then_some(cfg.limits.retry_after_secs);
            handshake::refuse_retry(tcp, r.status(), r.label(), retry).await;
            return None;
        }
    }
    let mut verified = None;
    if cfg.refuse_before_upgrade {
        let result = if !keys.has_project(&up.project) {
            Err(AuthError::UnknownProject)
        } else {
            match (&up.token, &cert) {
                (Some(t), _) => keys.verify(&up.project, t),
                (None, Some(c)) if keys.accepts_certificates(&up.project) => {
                    keys.verify_certificate(&up.project, c)
                }
                (None, _) => Err(AuthError::Missing),
            }
        };
        match result {
            Ok(id) => verified = Some(id),
            Err(e) => {
                count_refusal(&e);
                let code = e.close_code();
                let status = http::StatusCode::from_u16(code.http_status())
                    .unwrap_or(http::StatusCode::BAD_REQUEST);
                handshake::refuse(tcp, status, code.reason()).await;
                return None;
            }
        }
    }
    if timeout(handshake_deadline, handshake::accept(tcp, &mut up))
        .await
        .map_or(true, |r| r.is_err())
    {
        return None;
    }
    let mut ctx = WebSocketContext::from_partially_read(
        std::mem::take(&mut up.leftover),
        Role::Server,
        Some(shared.ws_config),
    );
    let identity = match verified {
        Some(id) => Ok(id),
        None if !keys.has_project(&up.project) => Err(AuthError::UnknownProject),
        None => match up.token.take() {
            Some(t) => keys.verify(&up.project, &t),
            None if cert.is_some() && keys.accepts_certificates(&up.project) => match &cert {
                Some(c) => keys.verify_certificate(&up.project, c),
                None => Err(AuthError::Missing),
            },
            None => {
                let deadline = Duration::from_millis(cfg.auth_timeout_ms);
                match timeout(deadline, read_auth_frame(tcp, &mut ctx)).await {
                    Ok(Some(t)) => keys.verify(&up.project, &t),
                    _ => Err(AuthError::Missing),
                }
            }
        },
    };
    drop(keys);
    let identity = match identity {
        Ok(id) => id,
        Err(e) => {
            count_refusal(&e);
            tracing::debug!(%remote, project = %up.project, error = %e, "authentication refused");
            let mut q = WriteQueue::default();
            close_and_finish(shared, tcp, &mut ctx, &mut q, e.close_code(), 0).await;
            return None;
        }
    };
    let project = ProjectId::new(&up.project).ok()?;
    let per_user = shared
        .limits
        .policy()
        .project(project.as_str())
        .map_or(0, |p| p.max_connections_per_user);
    let inserted = shared
        .hub
        .insert(
            NewConn {
                project: project.clone(),
                user: identity.user.clone(),
                groups: identity.groups.clone(),
                remote,
                expires_unix: identity.expires_unix,
            },
            per_user,
        )
        .await;
    let Some(handle) = inserted else {
        let code = CloseCode::TooManyConnections;
        count_refusal_code(code);
        let mut q = WriteQueue::default();
        close_and_finish(shared, tcp, &mut ctx, &mut q, code, 0).await;
        return None;
    };
    metrics::counter!("herald_edge_connects_total", "result" => "ok").increment(1);
    let mut q = WriteQueue::default();
    let groups: Vec<&str> = identity.groups.iter().map(|g| g.as_str()).collect();
    q.push(protocol::welcome(
        &shared.hub.connection_id(handle.number),
        identity.user.as_str(),
        &groups,
        cfg.ping_interval_secs,
        identity.expires_unix,
    ));
    drop(groups);
    Some(Box::new(Session {
        tcp: stream,
        ctx,
        q,
        ctl: BytesMut::new(),
        handle,
        user: identity.user,
        channels: identity
            .channels
            .into_iter()
            .map(String::into_boxed_str)
            .collect(),
        project,
        bucket: shared.limits.message_bucket(),
    }))
}

/// The PROXY header (when the listener expects one) and the TLS handshake (on `wss`), both
/// before `deadline`: the client's address, the stream, and the verified client certificate if
/// one was presented. `None`: refused, counted and closed.
async fn open(
    listener: &Bound,
    mut tcp: TcpStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(ClientAddr, Stream, Option<tls::ClientCert>)> {
    use tokio::time::timeout_at;
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
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    match timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            let cert = tls::client_cert(s.get_ref().1);
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
fn forwarded(
    listener: &crate::listener::ListenerConfig,
    addr: &mut ClientAddr,
    up: &handshake::Upgrade,
) {
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

fn count_refusal(e: &AuthError) {
    count_refusal_code(e.close_code());
}

fn count_refusal_code(code: CloseCode) {
    metrics::counter!("herald_edge_connects_total", "result" => code.label()).increment(1);
}

/// Reads a message; `WouldBlock` only when control frames wait to be written.
async fn read_message(
    stream: &mut Stream,
    ctx: &mut WebSocketContext,
    ctl: &mut BytesMut,
) -> Result<Message, WsError> {
    poll_fn(|cx| {
        match ctx.read(&mut Io {
            stream,
            cx,
            out: ctl,
        }) {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock && ctl.is_empty() => {
                Poll::Pending
            }
            r => Poll::Ready(r),
        }
    })
    .await
}

/// Reads frames until the first one; returns its token if it is an `auth` frame.
async fn read_auth_frame(tcp: &mut Stream, ctx: &mut WebSocketContext) -> Option<String> {
    let mut ctl = BytesMut::new();
    loop {
        let read = read_message(tcp, ctx, &mut ctl).await;
        if !ctl.is_empty() {
            tcp.write_all(&std::mem::take(&mut ctl)).await.ok()?;
        }
        match read {
            Ok(Message::Text(t)) => {
                return match protocol::parse(&t) {
                    Ok(ClientFrame::Auth { token }) => Some(token.into_owned()),
                    _ => None,
                };
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(_) => return None,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

enum Event {
    Message(Message),
    Closing(crate::hub::Closing),
    PeerClosed,
    ReadError(WsError),
    WriteError,
    /// The client sent frames faster than its rate limit.
    RateLimited,
}

fn poll_conn(
    cx: &mut Context<'_>,
    shared: &Shared,
    h: ConnHandle,
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
    q: &mut WriteQueue,
    ctl: &mut BytesMut,
) -> Poll<Event> {
    loop {
        q.take_ctl(ctl);
        let idle = match q.poll_write(tcp, cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(_)) => return Poll::Ready(Event::WriteError),
            Poll::Pending => false,
        };
        // Take more from the hub only once everything taken before is written: the hub's bound
        // then applies to what the socket could not absorb.
        match shared.hub.poll_outgoing(h, cx, &mut q.frames, idle) {
            Poll::Ready(Outgoing::Frames) => continue,
            Poll::Ready(Outgoing::Close(c)) => return Poll::Ready(Event::Closing(c)),
            Poll::Pending => {}
        }
        match ctx.read(&mut Io {
            stream: tcp,
            cx,
            out: ctl,
        }) {
            Ok(m) => return Poll::Ready(Event::Message(m)),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                // The stream registered the waker; control frames to write first, if any.
                if !ctl.is_empty() {
                    continue;
                }
                return Poll::Pending;
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                return Poll::Ready(Event::PeerClosed);
            }
            Err(e) => return Poll::Ready(Event::ReadError(e)),
        }
    }
}

/// What to do after a client frame.
enum Next {
    Continue,
    Close(CloseCode),
}

/// Handles one event of a live connection; returns the session when the connection goes on.
/// A connection that ends gives back its place in the project's count.
async fn step(shared: Arc<Shared>, mut s: Box<Session>, ev: Event) -> Option<Box<Session>> {
    if handle_event(&shared, &mut s, ev).await {
        return Some(s);
    }
    shared.limits.leave_project(s.project.as_str());
    None
}

/// Handles one event; returns whether the connection goes on.
async fn handle_event(shared: &Arc<Shared>, s: &mut Session, ev: Event) -> bool {
    let hub = &shared.hub;
    let h = s.handle;
    let (code, reconnect_after_ms) = match ev {
        Event::Message(m) => match on_message(shared, s, m).await {
            Next::Continue => return true,
            Next::Close(code) => (code, 0),
        },
        Event::RateLimited => (CloseCode::RateLimited, 0),
        Event::Closing(c) => (c.code, c.reconnect_after_ms),
        Event::PeerClosed => {
            s.q.take_ctl(&mut s.ctl);
            let close_timeout = Duration::from_millis(shared.cfg.close_timeout_ms);
            let _ = timeout(close_timeout, s.q.flush(&mut s.tcp)).await;
            hub.remove(h);
            metrics::counter!("herald_edge_closes_total", "code" => "peer").increment(1);
            return false;
        }
        Event::ReadError(WsError::Capacity(_)) => (CloseCode::MessageTooBig, 0),
        // A peer that drops TCP without a close frame is gone, not misbehaving: counted as io.
        Event::ReadError(WsError::Protocol(p))
            if !matches!(p, ProtocolError::ResetWithoutClosingHandshake) =>
        {
            (CloseCode::ProtocolError, 0)
        }
        Event::ReadError(WsError::Utf8(_)) => (CloseCode::ProtocolError, 0),
        Event::ReadError(_) | Event::WriteError => {
            hub.remove(h);
            metrics::counter!("herald_edge_closes_total", "code" => "io").increment(1);
            return false;
        }
    };
    hub.remove(h);
    s.q.discard_unsent();
    close_and_finish(
        shared,
        &mut s.tcp,
        &mut s.ctx,
        &mut s.q,
        code,
        reconnect_after_ms,
    )
    .await;
    false
}

/// Sends the close (with a `disconnect` frame first when there is a reconnect hint), waits for
/// the peer's answer within the close timeout, and shuts the socket.
async fn close_and_finish(
    shared: &Shared,
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
    q: &mut WriteQueue,
    code: CloseCode,
    reconnect_after_ms: u32,
) {
    metrics::counter!("herald_edge_closes_total", "code" => code.label()).increment(1);
    if reconnect_after_ms > 0 {
        q.push(protocol::disconnect(
            code.code(),
            code.reason(),
            reconnect_after_ms,
        ));
    }
    let mut ctl = BytesMut::new();
    {
        // Closing only writes (into `ctl`): no waker is needed.
        let mut noop = Context::from_waker(std::task::Waker::noop());
        let _ = ctx.close(
            &mut Io {
                stream: tcp,
                cx: &mut noop,
                out: &mut ctl,
            },
            Some(ws_close(code)),
        );
    }
    q.take_ctl(&mut ctl);
    let deadline = Duration::from_millis(shared.cfg.close_timeout_ms);
    let _ = timeout(deadline, async {
        q.flush(tcp).await?;
        // Wait for the peer's close (or EOF) so our close frame is not lost to a reset.
        if code == CloseCode::MessageTooBig {
            // The reader cannot go on after an oversized frame: discard the peer's bytes.
            let mut sink = [0u8; 256];
            while tcp.read(&mut sink).await? > 0 {}
            return tcp.shutdown().await;
        }
        loop {
            match read_message(tcp, ctx, &mut ctl).await {
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    q.take_ctl(&mut ctl);
                    q.flush(tcp).await?;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        q.take_ctl(&mut ctl);
        q.flush(tcp).await?;
        tcp.shutdown().await
    })
    .await;
}

async fn on_message(shared: &Shared, s: &mut Session, m: Message) -> Next {
    let q = &mut s.q;
    let text = match m {
        Message::Text(t) => t,
        Message::Binary(_) => {
            q.push(protocol::error(
                0,
                FrameError::BinaryNotSupported,
                "binary frames are not part of herald.v1",
            ));
            return Next::Continue;
        }
        _ => return Next::Continue,
    };
    let frame = match protocol::parse(&text) {
        Ok(f) => f,
        Err(p) => {
            q.push(protocol::error(p.id, p.code, p.message));
            return Next::Continue;
        }
    };
    let hub = &shared.hub;
    match frame {
        ClientFrame::Ping { id } => q.push(protocol::pong(id)),
        ClientFrame::Subscribe { id, group } => {
            let group = match GroupId::new(&group) {
                Ok(g) => g,
                Err(e) => {
                    q.push(protocol::error(id, FrameError::BadName, &e.to_string()));
                    return Next::Continue;
                }
            };
            if !channels_allow(&s.channels, group.as_str()) {
                q.push(protocol::error(
                    id,
                    FrameError::NotAllowed,
                    "the token's channels claim does not allow this group",
                ));
                return Next::Continue;
            }
            let max_groups = match shared.limits.policy().project(s.project.as_str()) {
                Some(p) if p.max_subscriptions_per_connection > 0 => {
                    (p.max_subscriptions_per_connection as usize)
                        .min(shared.cfg.max_groups_per_connection)
                }
                _ => shared.cfg.max_groups_per_connection,
            };
            match hub.join(s.handle, group, max_groups).await {
                JoinOutcome::Joined => q.push(protocol::ack(id)),
                JoinOutcome::TooMany => {
                    metrics::counter!("herald_edge_subscribes_refused_total", "reason" => "too_many_groups")
                        .increment(1);
                    q.push(protocol::error(
                        id,
                        FrameError::TooManyGroups,
                        "too many groups on this connection",
                    ))
                }
            }
        }
        ClientFrame::Unsubscribe { id, group } => match GroupId::new(&group) {
            Ok(g) => {
                hub.leave(s.handle, &g);
                q.push(protocol::ack(id));
            }
            Err(e) => q.push(protocol::error(id, FrameError::BadName, &e.to_string())),
        },
        ClientFrame::Refresh { id, token } => {
            let verified = shared.keys.load().verify(s.project.as_str(), &token);
            match verified {
                Ok(fresh) if fresh.user != s.user => {
                    return Next::Close(CloseCode::RefreshMismatch);
                }
                Ok(fresh) => {
                    hub.set_expiry(s.handle, fresh.expires_unix);
                    s.channels = fresh
                        .channels
                        .into_iter()
                        .map(String::into_boxed_str)
                        .collect();
                    q.push(protocol::ack(id));
                }
                Err(e) => q.push(protocol::error(id, FrameError::BadToken, &e.to_string())),
            }
        }
        ClientFrame::Auth { .. } => {
            q.push(protocol::error(
                0,
                FrameError::BadFrame,
                "already authenticated",
            ));
        }
    }
    Next::Continue
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn print_sizes() {
        use std::mem::size_of;
        println!("ctx {}", size_of::<super::WebSocketContext>());
        println!("tcp {}", size_of::<super::TcpStream>());
        println!("session {}", size_of::<super::Session>());
        println!("wq {}", size_of::<super::WriteQueue>());
        println!(
            "config {}",
            size_of::<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>()
        );
    }
}
