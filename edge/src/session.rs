//! The session layer: one authenticated client of any protocol, from its admission to its close.
//!
//! A single task per connection ([`ConnTask`]): it runs [`admission`](crate::admission), then
//! the live session, which reads frames through its transport ([`Link`]: a WebSocket, a
//! Server-Sent Events stream, or SockJS's HTTP requests), hands data frames to the connection's
//! [`Codec`], and writes every frame the hub queued for it in one vectored write. No channel, no
//! second task, no timer: the hub holds the queue and its ticker handles pings and expiry.
//! Codecs act on the session only through [`SessionOps`]: the same membership checks, limits and
//! metrics for every protocol and every transport.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use herald_core::codes::CloseCode;
use herald_core::ids::{GroupId, IdError, ProjectId, UserId};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::webhook::HookEvent;
use herald_core::codes::FrameError;
use herald_core::history::{History, StreamKey, StreamTarget};
use herald_core::projects::WebhookEvent;
use herald_core::proto::bus::TargetKind;

use crate::admission::{self, Admitted, Counted, Refused};
use crate::auth::{AuthError, channels_allow};
use crate::codec::mqtt::takeover::ClientIds;
use crate::codec::{Codec, Form, Welcome};
use crate::config::EdgeConfig;
use crate::device;
use crate::hub::{Closing, ConnHandle, JoinOutcome, NewConn, Outgoing};
use crate::limits::MessageBucket;
use crate::protocol::{self, Position, StreamOf};
use crate::resume::{self, Answer, Replay};
use crate::transport::{Inbound, Link, WriteQueue};
use crate::{Bound, Shared};

/// A connection's task: a hand-written future of two words, so every idle connection's tokio
/// task fits the smallest task cell (tokio aligns a task to 128 bytes: its header, scheduler
/// handle, id, trailer and this future wrapped by the edge's task tracker make exactly 128; one
/// word more and the task takes 256). Everything else lives in the boxed [`Session`]; the rare
/// steps that must wait (admission, a client frame, the close) run as boxed futures.
pub(crate) struct ConnTask {
    state: TaskState,
}

/// A step that must wait; `Some(session)` when it ends means the connection goes on.
type Step = Pin<Box<dyn Future<Output = Option<Box<Session>>> + Send>>;

enum TaskState {
    Busy(Step),
    /// Reading frames and writing queued ones.
    Live(Box<Session>),
}

impl ConnTask {
    /// A task serving one socket accepted on `listener` until it closes.
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: Arc<Bound>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Self {
        let step: Step = match Counted::socket(&shared.limits) {
            Ok(counted) => Box::pin(async move {
                let admitted = admission::admit(&shared, &listener, tcp, peer, counted).await?;
                start(shared, admitted).await
            }),
            Err(r) => Box::pin(async move {
                admission::shed(shared, listener, tcp, peer, r).await;
                None
            }),
        };
        Self {
            state: TaskState::Busy(step),
        }
    }
}

use std::net::SocketAddr;

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                // A step that ends without a session ends the task, which is not polled again
                // (and drops the finished step).
                TaskState::Busy(step) => match ready!(step.as_mut().poll(cx)) {
                    Some(session) => this.state = TaskState::Live(session),
                    None => return Poll::Ready(()),
                },
                TaskState::Live(s) => {
                    let mut ev = ready!(s.poll_event(cx));
                    if let Event::Message(m) = &ev {
                        if !s.shared.limits.take_message(&mut s.core.bucket) {
                            ev = Event::RateLimited;
                        } else {
                            s.shared.hub.touch(s.core.handle);
                            // Pings, pongs and the peer's close are answered by tungstenite.
                            if !matches!(m, Message::Text(_) | Message::Binary(_)) {
                                continue;
                            }
                        }
                    }
                    // A placeholder while the session moves into its step (a future of no
                    // size: no allocation).
                    let idle: Step = Box::pin(std::future::pending());
                    let TaskState::Live(session) =
                        std::mem::replace(&mut this.state, TaskState::Busy(idle))
                    else {
                        return Poll::Ready(());
                    };
                    this.state = TaskState::Busy(Box::pin(step(session, ev)));
                }
            }
        }
    }
}

/// Everything a live connection holds, in one allocation; the task's own future stays a few
/// words.
pub(crate) struct Session {
    /// What every connection shares (held here, not in the task's own future).
    shared: Arc<Shared>,
    link: Link,
    q: WriteQueue,
    core: SessionCore,
    codec: Codec,
}

impl Session {
    /// The `protocol` label of the connection's metrics.
    fn label(&self) -> &'static str {
        Form::of(self.codec.wire(), self.q.framing()).label()
    }
}

/// The protocol-independent state of a session.
pub(crate) struct SessionCore {
    handle: ConnHandle,
    user: UserId,
    channels: Box<[Box<str>]>,
    project: ProjectId,
    /// Inbound frame rate.
    bucket: MessageBucket,
    /// What the connection counts against the limits, given back when the session ends.
    _counted: Counted,
}

/// What a codec may do to its session.
pub(crate) struct SessionOps<'a> {
    shared: &'a Shared,
    core: &'a mut SessionCore,
    q: &'a mut WriteQueue,
}

/// Why a subscription was refused.
#[derive(Debug)]
pub(crate) enum SubscribeRefused {
    /// The group name is outside the alphabet or too long.
    BadName(IdError),
    /// The token's `channels` claim does not allow the group.
    NotAllowed,
    /// The connection is in its maximum of groups.
    TooMany,
}

/// Why a subscription with `since` was refused.
#[derive(Debug)]
pub(crate) enum ResumeRefused {
    /// As a plain subscription would be.
    Subscribe(SubscribeRefused),
    /// The project keeps no history of the group.
    NotRecoverable,
}

/// Why a refresh was refused.
#[derive(Debug)]
pub(crate) enum RefreshRefused {
    /// The token does not verify.
    Invalid(AuthError),
    /// The token names another user: the connection must close (4010).
    OtherUser,
}

impl SessionOps<'_> {
    /// Queues a frame for the socket.
    pub(crate) fn push(&mut self, frame: Bytes) {
        self.q.push(frame);
    }

    /// The connection's user.
    #[allow(dead_code)]
    pub(crate) fn user(&self) -> &UserId {
        &self.core.user
    }

    /// The connection's project.
    pub(crate) fn project(&self) -> &ProjectId {
        &self.core.project
    }

    /// The edge's settings.
    pub(crate) fn config(&self) -> &EdgeConfig {
        &self.shared.cfg
    }

    /// The connection's place in the hub.
    pub(crate) fn handle(&self) -> ConnHandle {
        self.core.handle
    }

    /// The connection's public id (`<edge>-<number>`).
    pub(crate) fn connection_id(&self) -> String {
        self.shared
            .hub
            .connection_id(self.core.handle.number)
            .to_string()
    }

    /// Sets the form in which the hub queues messages for this connection from now on.
    pub(crate) fn set_form(&self, form: Form) {
        self.shared.hub.set_form(self.core.handle, form);
    }

    /// The MQTT client ids held on this edge (session takeover).
    pub(crate) fn mqtt_client_ids(&self) -> &Arc<ClientIds> {
        &self.shared.mqtt_client_ids
    }

    /// Closes another connection of this edge with `code` (a session taken over).
    pub(crate) fn close_other(&self, other: ConnHandle, code: CloseCode) {
        self.shared.hub.close(
            other,
            Closing {
                code,
                reconnect_after_ms: 0,
            },
        );
    }

    /// Joins `group` when the token's `channels` allow it and the connection is under its cap of
    /// groups; resolves once the registry holds the interest.
    pub(crate) async fn subscribe(&mut self, group: &str) -> Result<GroupId, SubscribeRefused> {
        let group = GroupId::new(group).map_err(SubscribeRefused::BadName)?;
        if !channels_allow(&self.core.channels, group.as_str()) {
            return Err(SubscribeRefused::NotAllowed);
        }
        let max_groups = max_groups(self.shared, &self.core.project);
        match self
            .shared
            .hub
            .join(self.core.handle, group.clone(), max_groups)
            .await
        {
            JoinOutcome::Joined => {
                let core = &*self.core;
                let shared = self.shared;
                shared
                    .webhooks
                    .emit(core.project.as_str(), WebhookEvent::Subscribe, || {
                        HookEvent::connection(
                            WebhookEvent::Subscribe,
                            core.user.as_str(),
                            shared.hub.connection_id(core.handle.number).to_string(),
                            Some(group.as_str()),
                        )
                    });
                Ok(group)
            }
            JoinOutcome::TooMany => {
                metrics::counter!("herald_edge_subscribes_refused_total", "reason" => "too_many_groups")
                    .increment(1);
                Err(SubscribeRefused::TooMany)
            }
        }
    }

    /// Joins `group` like [`SessionOps::subscribe`] and sends what the client missed on its
    /// stream since `since` (then `resumed`), ahead of live messages.
    pub(crate) async fn subscribe_since(
        &mut self,
        id: u64,
        group: &str,
        since: Position,
    ) -> Result<GroupId, ResumeRefused> {
        let stream = StreamOf::Group(group.to_owned());
        let (kind, name, key) = resume::stream_of(&stream, &self.core.project, &self.core.user)
            .map_err(|e| ResumeRefused::Subscribe(SubscribeRefused::BadName(e)))?;
        if !self.keeps(&key) {
            return Err(ResumeRefused::NotRecoverable);
        }
        let hub = &self.shared.hub;
        hub.begin_recovery(self.core.handle, kind, &name);
        match self.subscribe(group).await {
            Ok(g) => {
                self.replay(id, stream, kind, name, key, since, Answer::Native);
                Ok(g)
            }
            Err(e) => {
                hub.abandon_recovery(self.core.handle, kind, &name, None);
                Err(ResumeRefused::Subscribe(e))
            }
        }
    }

    /// Whether the project keeps the history of `key`.
    fn keeps(&self, key: &StreamKey) -> bool {
        self.keeps_target(&key.target)
    }

    /// Whether the project keeps the history of `target`.
    pub(crate) fn keeps_target(&self, target: &StreamTarget) -> bool {
        self.shared
            .keys
            .load()
            .history(self.core.project.as_str())
            .is_some_and(|h| h.keeps(target))
    }

    /// Where recoverable messages are kept.
    pub(crate) fn history(&self) -> &dyn History {
        &*self.shared.history
    }

    /// Starts holding the live messages of one of the connection's streams to resume it;
    /// `None` when the project keeps no history of it (or the name is invalid).
    pub(crate) fn begin_resume(
        &mut self,
        stream: &StreamOf,
    ) -> Option<(TargetKind, String, StreamKey)> {
        let (kind, name, key) =
            resume::stream_of(stream, &self.core.project, &self.core.user).ok()?;
        if !self.keeps(&key) {
            return None;
        }
        self.shared
            .hub
            .begin_recovery(self.core.handle, kind, &name);
        Some((kind, name, key))
    }

    /// The frame being handled acknowledged a message the server sent: it does not count
    /// against the client's frame rate.
    pub(crate) fn acknowledged(&mut self) {
        self.shared.limits.refund_message(&mut self.core.bucket);
    }

    /// Stops holding a stream's live messages for a replay that will not run.
    pub(crate) fn abandon_recovery(&self, kind: TargetKind, name: &str) {
        self.shared
            .hub
            .abandon_recovery(self.core.handle, kind, name, None);
    }

    /// Starts the task that sends a stream's missed messages to this connection, encoded for
    /// `wire`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn replay(
        &self,
        id: u64,
        stream: StreamOf,
        kind: TargetKind,
        name: String,
        key: StreamKey,
        since: Position,
        answer: Answer,
    ) {
        let replay = Replay {
            form: Form::of(answer.wire(), self.q.framing()),
            hub: self.shared.hub.clone(),
            history: self.shared.history.clone(),
            conn: self.core.handle,
            id,
            stream,
            kind,
            name,
            key,
            since,
            // A chunk is queued while the queue holds less than a quarter of its bound and
            // is itself about a quarter: a replay keeps the queue under half its bound (plus
            // one message), leaving the rest for live messages of other streams.
            room: (self.shared.cfg.max_queued_bytes / 4).max(1),
            answer,
        };
        tokio::spawn(replay.run());
    }

    /// Whether the connection is a member of `group` (joined by its token, itself or the
    /// server).
    pub(crate) fn is_member(&self, group: &str) -> bool {
        self.shared.hub.is_member(self.core.handle, group)
    }

    /// Leaves `group`; whether the connection was in it.
    pub(crate) fn unsubscribe(&mut self, group: &str) -> Result<bool, IdError> {
        let group = GroupId::new(group)?;
        Ok(self.shared.hub.leave(self.core.handle, &group))
    }

    /// Takes a fresh token of the same user: its expiry and `channels` replace the old ones.
    pub(crate) fn refresh(&mut self, token: &str) -> Result<(), RefreshRefused> {
        let fresh = self
            .shared
            .keys
            .load()
            .verify(self.core.project.as_str(), token)
            .map_err(RefreshRefused::Invalid)?;
        if fresh.user != self.core.user {
            return Err(RefreshRefused::OtherUser);
        }
        self.shared
            .hub
            .set_expiry(self.core.handle, fresh.expires_unix);
        self.core.channels = fresh
            .channels
            .into_iter()
            .map(String::into_boxed_str)
            .collect();
        Ok(())
    }
}

/// The most groups a connection of `project` may be in.
pub(crate) fn max_groups(shared: &Shared, project: &ProjectId) -> usize {
    let cfg = &shared.cfg;
    match shared.limits.policy().project(project.as_str()) {
        Some(p) if p.max_subscriptions_per_connection > 0 => {
            (p.max_subscriptions_per_connection as usize).min(cfg.max_groups_per_connection)
        }
        _ => cfg.max_groups_per_connection,
    }
}

/// Puts an admitted client into the hub and welcomes it; refuses it when its user already has
/// the project's maximum of connections here.
async fn start(shared_arc: Arc<Shared>, a: Admitted) -> Option<Box<Session>> {
    let shared = &*shared_arc;
    let Admitted {
        mut link,
        mut q,
        remote,
        counted,
        project,
        identity,
        mut codec,
        mut resume,
        device,
    } = a;
    // Streams resumed at connect: checked now, held from the insertion on, replayed after the
    // welcome. Refused ones are answered with an error frame each.
    let mut resumed = Vec::new();
    let mut resume_errors = Vec::new();
    if let Some(name) = device
        && let Codec::Native(slot) = &mut codec
    {
        *slot = {
            let keys = shared.keys.load_full();
            device::start(
                &name,
                &project,
                &identity.user,
                keys.history(project.as_str()),
                &*shared.history,
                &shared.sessions,
                &mut resume,
                &mut resume_errors,
            )
            .await
        };
    }
    if !resume.is_empty() {
        let keys = shared.keys.load();
        let history = keys.history(project.as_str());
        for s in resume {
            match resume::stream_of(&s.stream, &project, &identity.user) {
                Err(e) => {
                    resume_errors.push(protocol::error(0, FrameError::BadName, &e.to_string()))
                }
                Ok((kind, name, key)) => {
                    if !history.is_some_and(|h| h.keeps(&key.target)) {
                        resume_errors.push(protocol::error(
                            0,
                            FrameError::NotRecoverable,
                            "this stream keeps no history",
                        ));
                    } else if kind == TargetKind::Group
                        && !identity.groups.iter().any(|g| g.as_str() == name)
                    {
                        resume_errors.push(protocol::error(
                            0,
                            FrameError::BadFrame,
                            "resume names a group the token does not join: subscribe with since",
                        ));
                    } else {
                        resumed.push((s.stream, kind, name, key, s.position));
                    }
                }
            }
        }
    }
    // An MQTT persistent session: cleared or loaded now, its missed messages held from the
    // insertion on and replayed once started.
    let held = match &mut codec {
        Codec::Mqtt(m) => {
            let keys = shared.keys.load_full();
            m.prepare(
                &project,
                &identity.user,
                keys.history(project.as_str()),
                &shared.sessions,
            )
            .await
        }
        _ => Vec::new(),
    };
    let per_user = shared
        .limits
        .policy()
        .project(project.as_str())
        .map_or(0, |p| p.max_connections_per_user);
    let replaces = codec.takes_over(&shared.mqtt_client_ids, &project);
    let inserted = shared
        .hub
        .insert(
            NewConn {
                project: project.clone(),
                user: identity.user.clone(),
                groups: identity.groups.clone(),
                remote,
                expires_unix: identity.expires_unix,
                wire: codec.wire(),
                deflate: link.deflates(),
                framing: q.framing(),
                keep_alive_secs: codec.keep_alive_secs(),
                heart_beat_secs: codec.heart_beat_secs(),
                replaces,
                resume: resumed
                    .iter()
                    .map(|(_, kind, name, _, _)| (*kind, name.clone()))
                    .chain(held)
                    .collect(),
            },
            per_user,
        )
        .await;
    let Some(handle) = inserted else {
        let refused = Refused::Close(CloseCode::TooManyConnections);
        let answer = codec.refusal(refused.close_code());
        let label = Form::of(codec.wire(), q.framing()).label();
        link.refuse(shared, &mut q, answer, &refused, label).await;
        return None;
    };
    // A ban installed between the check at admission and the insertion, whose sweep of the
    // hub came before this connection was in it, closes it now.
    if shared.keys.load().bans().is_banned(
        project.as_str(),
        identity.user.as_str(),
        herald_core::bans::now_ms(),
    ) {
        shared.hub.close(
            handle,
            crate::hub::Closing {
                code: CloseCode::Banned,
                reconnect_after_ms: 0,
            },
        );
    }
    let label = Form::of(codec.wire(), q.framing()).label();
    metrics::counter!("herald_edge_connects_total", "result" => "ok", "protocol" => label)
        .increment(1);
    if let Some(transport) = link.sockjs_label(q.framing()) {
        metrics::counter!("herald_edge_sockjs_sessions_total", "transport" => transport)
            .increment(1);
    }
    shared
        .webhooks
        .emit(project.as_str(), WebhookEvent::Connect, || {
            HookEvent::connection(
                WebhookEvent::Connect,
                identity.user.as_str(),
                shared.hub.connection_id(handle.number).to_string(),
                None,
            )
        });
    let groups: Vec<&str> = identity.groups.iter().map(|g| g.as_str()).collect();
    q.push(codec.welcome(&Welcome {
        connection_id: &shared.hub.connection_id(handle.number).to_string(),
        user: identity.user.as_str(),
        groups: &groups,
        ping_interval_secs: shared.cfg.ping_interval_secs,
        expires_unix: identity.expires_unix,
    }));
    drop(groups);
    let mut session = Box::new(Session {
        shared: shared_arc.clone(),
        link,
        q,
        core: SessionCore {
            handle,
            user: identity.user,
            channels: identity
                .channels
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            project,
            bucket: shared.limits.message_bucket(),
            _counted: counted,
        },
        codec,
    });
    let s = &mut *session;
    let mut ops = SessionOps {
        shared,
        core: &mut s.core,
        q: &mut s.q,
    };
    for e in resume_errors {
        ops.push(e);
    }
    for (stream, kind, name, key, since) in resumed {
        ops.replay(0, stream, kind, name, key, since, Answer::Native);
    }
    if let Next::Close(code) = s.codec.started(&mut ops).await {
        close_session(shared, s, code, 0).await;
        return None;
    }
    Some(session)
}

/// What woke a live session.
enum Event {
    Message(Message),
    Closing(Closing),
    PeerClosed,
    /// The client broke its transport's rules: closed with the code, or dropped (`None`).
    ReadError(Option<CloseCode>),
    WriteError,
    /// The client sent frames faster than its rate limit.
    RateLimited,
}

impl Session {
    /// Writes what is queued, takes more from the hub once everything taken before is written
    /// (the hub's bound then applies to what the client could not absorb), and reads the next
    /// client message.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let shared = &*self.shared;
        let h = self.core.handle;
        loop {
            self.link.take_ctl(&mut self.q);
            let idle = match self.link.poll_write(cx, &mut self.q) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(_)) => return Poll::Ready(Event::WriteError),
                Poll::Pending => false,
            };
            match shared.hub.poll_outgoing(h, cx, &mut self.q.frames, idle) {
                Poll::Ready(Outgoing::Frames) => {
                    // The codec completes its frames, the transport frames them.
                    if let Some(code) = self.codec.render(&mut self.q.frames) {
                        return Poll::Ready(Event::Closing(Closing {
                            code,
                            reconnect_after_ms: 0,
                        }));
                    }
                    self.link.frame_taken(&mut self.q);
                    continue;
                }
                Poll::Ready(Outgoing::Close(c)) => return Poll::Ready(Event::Closing(c)),
                Poll::Pending => {}
            }
            return match ready!(self.link.poll_read(cx, shared, self.q.framing())) {
                Inbound::Message(m) => Poll::Ready(Event::Message(m)),
                Inbound::Again => continue,
                Inbound::Closed => Poll::Ready(Event::PeerClosed),
                Inbound::Failed(code) => Poll::Ready(Event::ReadError(code)),
            };
        }
    }
}

/// What to do after a client frame.
pub(crate) enum Next {
    /// The session goes on.
    Continue,
    /// The server closes the connection with this code.
    Close(CloseCode),
}

/// Handles one event of a live connection; returns the session when the connection goes on.
/// A session that ends is dropped, and with it everything it counted against the limits.
async fn step(mut s: Box<Session>, ev: Event) -> Option<Box<Session>> {
    let shared = s.shared.clone();
    handle_event(&shared, &mut s, ev).await.then_some(s)
}

/// Handles one event; returns whether the connection goes on.
async fn handle_event(shared: &Shared, s: &mut Session, ev: Event) -> bool {
    let (code, reconnect_after_ms) = match ev {
        Event::Message(m) => {
            let mut ops = SessionOps {
                shared,
                core: &mut s.core,
                q: &mut s.q,
            };
            match s.codec.on_message(&mut ops, m).await {
                Next::Continue => return true,
                Next::Close(code) => (code, 0),
            }
        }
        Event::RateLimited => (CloseCode::RateLimited, 0),
        Event::Closing(c) => (c.code, c.reconnect_after_ms),
        Event::PeerClosed => {
            s.link.peer_closed(shared, &mut s.q).await;
            remove(shared, &s.core);
            metrics::counter!("herald_edge_closes_total", "code" => "peer", "protocol" => s.label())
                .increment(1);
            return false;
        }
        Event::ReadError(Some(code)) => (code, 0),
        Event::ReadError(None) | Event::WriteError => {
            remove(shared, &s.core);
            metrics::counter!("herald_edge_closes_total", "code" => "io", "protocol" => s.label())
                .increment(1);
            return false;
        }
    };
    close_session(shared, s, code, reconnect_after_ms).await;
    false
}

/// Takes a connection out of the hub, and tells the project's webhook.
fn remove(shared: &Shared, core: &SessionCore) {
    shared.hub.remove(core.handle);
    shared
        .webhooks
        .emit(core.project.as_str(), WebhookEvent::Disconnect, || {
            HookEvent::connection(
                WebhookEvent::Disconnect,
                core.user.as_str(),
                shared.hub.connection_id(core.handle.number).to_string(),
                None,
            )
        });
}

/// Closes a live session with `code`: out of the hub, unsent frames dropped, the protocol's last
/// words (a `disconnect`, MQTT `DISCONNECT`), the close handshake.
async fn close_session(shared: &Shared, s: &mut Session, code: CloseCode, reconnect_after_ms: u32) {
    remove(shared, &s.core);
    s.q.discard_unsent();
    if let Some(last) = s.codec.closing(code, reconnect_after_ms) {
        s.q.push(last);
    }
    let protocol = s.label();
    s.link
        .close(shared, &mut s.q, code, reconnect_after_ms, protocol)
        .await;
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    /// A live connection's state is one allocation: keep it small (idle RSS per connection),
    /// within jemalloc's 256-byte size class (the next is 320).
    #[test]
    fn session_stays_small() {
        let size = size_of::<super::Session>();
        println!("session: {size} bytes");
        assert!(size <= 256, "session grew to {size} bytes");
    }
}
