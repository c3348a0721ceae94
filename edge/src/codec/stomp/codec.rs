//! A STOMP connection over the session layer: the `CONNECT` exchange, client frames turned into
//! session operations, deliveries completed per connection, and the last frame before a close.
//!
//! The session is reached only through [`Ops`], so this logic is tested without sockets.
//! Every refusal is an `ERROR` frame (with the offending frame's `receipt` as `receipt-id`)
//! followed by the close, as STOMP requires: the frame is kept for [`StompCodec::closing`],
//! which the session calls after discarding what was queued and before the close frame.

use std::collections::VecDeque;

use bytes::Bytes;
use herald_core::codes::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{ConnectError, HeartBeat, read_connect};
use super::destination::{Destination, DestinationError};
use super::encode::{connected, error, receipt};
use super::parse::{Command, Frame, Item, ParseError, Reader};
use super::subs::{Overflow, SubError, SubLimits, Subscriptions, read_subscribe, subscription_id};
use super::{Limits, Version};
use crate::protocol::{Position, StreamOf};
use crate::resume::Answer;
use crate::session::{SessionOps, SubscribeRefused};

/// Why the session refused a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefused {
    /// The group name is invalid.
    BadName,
    /// The token's `channels` claim does not allow it.
    NotAllowed,
    /// The connection is in its maximum of groups.
    TooMany,
}

/// What the codec needs from its session.
#[allow(async_fn_in_trait)]
pub trait Ops {
    /// Queues a ready frame for the socket.
    fn push(&mut self, frame: Bytes);
    /// The connection's project.
    fn project(&self) -> &str;
    /// Joins `group` (checks the token's `channels` and the caps); resolves once registered.
    async fn join(&mut self, group: &str) -> Result<(), JoinRefused>;
    /// Leaves `group`.
    fn leave(&mut self, group: &str);
    /// Whether the connection is a member of `group` already (e.g. the server subscribed it):
    /// subscribing to it then needs no `channels`.
    fn is_member(&self, group: &str) -> bool {
        let _ = group;
        false
    }
    /// Starts holding the live messages of the stream `dest` receives, to resume it; false when
    /// the project keeps no history of it.
    fn begin_resume(&mut self, dest: &Destination) -> bool {
        let _ = dest;
        false
    }
    /// Sends the messages of `dest`'s stream after `offset` of `epoch`, then the held live ones;
    /// once done, the `RECEIPT` named `receipt` (if any) with the outcome.
    fn resume(
        &mut self,
        dest: &Destination,
        offset: u64,
        epoch: u32,
        version: Version,
        receipt: Option<&str>,
    ) {
        let _ = (dest, offset, epoch, version, receipt);
    }
    /// The frame being handled settled a message the server sent (`ACK`/`NACK`): it does not
    /// count against the client's frame rate.
    fn acknowledged(&mut self) {}
    /// Lets live messages of `dest`'s stream through again (a resume that will not run).
    fn abandon_resume(&mut self, dest: &Destination) {
        let _ = dest;
    }
}

/// The stream a destination receives.
fn stream_of(dest: &Destination) -> StreamOf {
    match dest {
        Destination::Broadcast => StreamOf::Broadcast,
        Destination::Group(g) => StreamOf::Group(g.as_str().to_owned()),
        Destination::UserQueue(_) => StreamOf::User,
    }
}

/// Where a `SUBSCRIBE` resumes: its `offset` and `epoch` headers (both or neither).
fn resume_from(f: &Frame) -> Result<Option<(u64, u32)>, &'static str> {
    match (f.header("offset"), f.header("epoch")) {
        (None, None) => Ok(None),
        (Some(o), Some(e)) => match (o.parse(), e.parse()) {
            (Ok(o), Ok(e)) => Ok(Some((o, e))),
            _ => Err("offset and epoch must be integers (the headers of the last message handled)"),
        },
        _ => Err("offset and epoch go together"),
    }
}

/// The edge's STOMP settings.
#[derive(Debug, Clone, Copy)]
pub struct StompConfig {
    /// Frame limits.
    pub limits: Limits,
    /// Subscription limits.
    pub subs: SubLimits,
    /// The server's heart-beat: (can send every, wants to receive every), in ms; 0 is never.
    pub heart_beat: (u32, u32),
}

impl StompConfig {
    /// The settings of an edge: frames up to `edge.max_message_bytes`, subscriptions up to
    /// `edge.max_groups_per_connection`, held messages up to `edge.max_queued_bytes`, the
    /// heart-beat both ways every `edge.ping_interval_secs` (the native protocol's ping).
    pub fn from_edge(cfg: &crate::config::EdgeConfig) -> Self {
        let d = StompConfig::default();
        let every_ms = cfg
            .ping_interval_secs
            .saturating_mul(1000)
            .min(u64::from(u32::MAX)) as u32;
        StompConfig {
            heart_beat: (every_ms, every_ms),
            limits: Limits {
                max_frame_bytes: cfg.max_message_bytes,
                ..d.limits
            },
            subs: SubLimits {
                max_subscriptions: cfg.max_groups_per_connection,
                max_held_bytes: cfg.max_queued_bytes,
                ..d.subs
            },
        }
    }
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            limits: Limits::default(),
            subs: SubLimits::default(),
            heart_beat: (10_000, 10_000),
        }
    }
}

/// A refusal: the close code and the `ERROR` frame to send before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The WebSocket close code.
    pub code: CloseCode,
    /// The `ERROR` frame.
    pub frame: Bytes,
}

/// What a `CONNECT` gave.
pub struct Connected {
    /// The token from the `CONNECT` headers, if any.
    pub token: Option<String>,
    /// The codec for the session.
    pub codec: StompCodec,
}

/// What to do after a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on.
    Continue,
    /// Close with this code (after [`StompCodec::closing`]'s frame).
    Close(CloseCode),
}

/// One STOMP connection's state.
pub struct StompCodec {
    version: Version,
    heart_beat: HeartBeat,
    /// `receipt` of the `CONNECT`, answered after `CONNECTED`.
    connect_receipt: Option<Box<str>>,
    reader: Reader,
    subs: Subscriptions,
    /// Groups joined from the token: subscribing needs no `channels`, unsubscribing keeps them.
    token_groups: Box<[Box<str>]>,
    /// The frame to send before the coming close (an `ERROR`, or the `RECEIPT` of `DISCONNECT`);
    /// boxed, as it is rare.
    last: Option<Box<Bytes>>,
    /// The server's `heart-beat`, as sent in `CONNECTED`.
    server_heart_beat: (u32, u32),
    /// The bounds of the subscriptions, refreshed from the edge's settings at every message.
    sub_limits: SubLimits,
}

fn count_malformed(reason: &'static str) {
    metrics::counter!("herald_edge_stomp_malformed_total", "reason" => reason).increment(1);
}

fn parse_label(e: &ParseError) -> &'static str {
    match e {
        ParseError::TooLarge(_) => "too_large",
        ParseError::UnknownCommand => "unknown_command",
        ParseError::HeaderWithoutColon => "header",
        ParseError::TooManyHeaders(_) => "too_many_headers",
        ParseError::BadEscape => "escape",
        ParseError::NotUtf8 => "utf8",
        ParseError::BadContentLength | ParseError::MissingNul => "content_length",
        ParseError::StrayCarriageReturn => "eol",
    }
}

impl StompCodec {
    /// Reads the first WebSocket message of a connection: one `CONNECT` (or `STOMP`) frame,
    /// possibly after heart-beats, and nothing else.
    pub fn hello(data: &[u8], cfg: &StompConfig) -> Result<Connected, Refusal> {
        let refuse = |code, message: &str, detail: &str| Refusal {
            code,
            frame: error(Version::V10, message, None, detail),
        };
        let mut items = Vec::new();
        let mut reader = Reader::default();
        if let Err(e) = reader.feed(data, Version::V12, &cfg.limits, &mut items) {
            count_malformed(parse_label(&e));
            let code = if e.is_too_large() {
                CloseCode::MessageTooBig
            } else {
                CloseCode::ProtocolError
            };
            return Err(refuse(code, &e.to_string(), ""));
        }
        let mut frames = items.into_iter().filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::HeartBeat => None,
        });
        let (Some(frame), None, 0) = (frames.next(), frames.next(), reader.pending()) else {
            count_malformed("connect");
            return Err(refuse(
                CloseCode::ProtocolError,
                "expected one CONNECT frame",
                "The first WebSocket message must hold one whole CONNECT or STOMP frame, and nothing may follow it before CONNECTED.",
            ));
        };
        let c = read_connect(&frame).map_err(|e| {
            count_malformed("connect");
            let frame = match e {
                // The specification's answer also names the versions in a `version` header.
                ConnectError::NoCommonVersion => no_common_version(&e.to_string()),
                _ => error(Version::V10, &e.to_string(), frame.header("receipt"), ""),
            };
            Refusal {
                code: CloseCode::ProtocolError,
                frame,
            }
        })?;
        Ok(Connected {
            token: c.token,
            codec: StompCodec {
                version: c.version,
                heart_beat: HeartBeat::negotiate(c.heart_beat, cfg.heart_beat),
                connect_receipt: c.receipt.map(String::into_boxed_str),
                reader: Reader::default(),
                subs: Subscriptions::new(c.version),
                token_groups: Box::default(),
                last: None,
                server_heart_beat: cfg.heart_beat,
                sub_limits: cfg.subs,
            },
        })
    }

    /// The version agreed.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The heart-beat intervals agreed.
    pub fn heart_beat(&self) -> HeartBeat {
        self.heart_beat
    }

    /// `CONNECTED` (and the `RECEIPT` the `CONNECT` asked for), once the token is accepted;
    /// remembers the token's groups.
    pub fn welcome(&mut self, connection_id: &str, user: &str, token_groups: &[&str]) -> Bytes {
        self.token_groups = token_groups.iter().map(|g| Box::from(*g)).collect();
        let c = connected(self.version, self.server_heart_beat, connection_id, user);
        match self.connect_receipt.take() {
            None => c,
            Some(r) => [c, receipt(self.version, &r)].concat().into(),
        }
    }

    /// The `ERROR` answering a refused `CONNECT` (the token, the project, the limits).
    pub fn refusal(&self, code: CloseCode) -> Bytes {
        error(
            self.version,
            code.reason(),
            self.connect_receipt.as_deref(),
            "",
        )
    }

    /// What to send before the server closes with `code`: the frame a refusal or `DISCONNECT`
    /// left, else an `ERROR` naming the reason (none for a normal closure).
    pub fn closing(&mut self, code: CloseCode, reconnect_after_ms: u32) -> Option<Bytes> {
        if let Some(last) = self.last.take() {
            return Some(*last);
        }
        match code {
            CloseCode::Normal => None,
            _ if reconnect_after_ms > 0 => Some(error(
                self.version,
                code.reason(),
                None,
                &format!("reconnect after {reconnect_after_ms} ms"),
            )),
            _ => Some(error(self.version, code.reason(), None, "")),
        }
    }

    /// Completes the frames just taken from the hub for this connection.
    pub fn render(&mut self, frames: &mut VecDeque<Bytes>) -> Result<(), Overflow> {
        self.subs.render(frames, &self.sub_limits)
    }

    /// Handles the bytes of one client WebSocket message (text or binary).
    pub async fn on_message(&mut self, ops: &mut impl Ops, data: &[u8], cfg: &StompConfig) -> Next {
        self.sub_limits = cfg.subs;
        let mut items = Vec::new();
        let fed = self
            .reader
            .feed(data, self.version, &cfg.limits, &mut items);
        // Frames complete before a malformed one are still handled.
        for item in items {
            if let Item::Frame(f) = item
                && let Next::Close(c) = self.on_frame(ops, f, cfg).await
            {
                return Next::Close(c);
            }
        }
        match fed {
            Ok(()) => Next::Continue,
            Err(e) => {
                count_malformed(parse_label(&e));
                let code = if e.is_too_large() {
                    CloseCode::MessageTooBig
                } else {
                    CloseCode::ProtocolError
                };
                self.fail(code, &e.to_string(), None, "")
            }
        }
    }

    /// Keeps an `ERROR` for [`StompCodec::closing`] and closes with `code`.
    fn fail(
        &mut self,
        code: CloseCode,
        message: &str,
        receipt_id: Option<&str>,
        detail: &str,
    ) -> Next {
        self.last = Some(Box::new(error(self.version, message, receipt_id, detail)));
        Next::Close(code)
    }

    fn ok(&self, ops: &mut impl Ops, f: &Frame) {
        if let Some(r) = f.header("receipt") {
            ops.push(receipt(self.version, r));
        }
    }

    async fn on_frame(&mut self, ops: &mut impl Ops, f: Frame, cfg: &StompConfig) -> Next {
        let receipt_id = f.header("receipt");
        match f.command {
            Command::Subscribe => self.subscribe(ops, &f, cfg).await,
            Command::Unsubscribe => {
                let id = match subscription_id(&f, self.version) {
                    Ok(id) => id,
                    Err(e) => {
                        count_malformed("unsubscribe");
                        return self.fail(CloseCode::ProtocolError, &e.to_string(), receipt_id, "");
                    }
                };
                let mut released = VecDeque::new();
                if let Some(Destination::Group(g)) = self.subs.remove(id, &mut released, &cfg.subs)
                    && !self.subs.has_group(g.as_str())
                    && !self.is_token_group(g.as_str())
                {
                    ops.leave(g.as_str());
                }
                released.into_iter().for_each(|b| ops.push(b));
                self.ok(ops, &f);
                Next::Continue
            }
            Command::Ack | Command::Nack => {
                let mut released = VecDeque::new();
                match self.subs.ack(&f, &mut released, &cfg.subs) {
                    Ok(found) => {
                        if found {
                            ops.acknowledged();
                        }
                        released.into_iter().for_each(|b| ops.push(b));
                        self.ok(ops, &f);
                        Next::Continue
                    }
                    Err(e) => {
                        count_malformed("ack");
                        self.fail(CloseCode::ProtocolError, &e.to_string(), receipt_id, "")
                    }
                }
            }
            Command::Disconnect => {
                self.last = receipt_id.map(|r| Box::new(receipt(self.version, r)));
                Next::Close(CloseCode::Normal)
            }
            Command::Send => self.fail(
                CloseCode::PublishNotAllowed,
                "SEND is not allowed",
                receipt_id,
                "Clients only receive here: publish through the back-end's gRPC API.",
            ),
            Command::Begin | Command::Commit | Command::Abort => self.fail(
                CloseCode::ProtocolError,
                "transactions are not supported",
                receipt_id,
                "",
            ),
            Command::Connect | Command::Stomp => {
                count_malformed("connect");
                self.fail(
                    CloseCode::ProtocolError,
                    "already connected",
                    receipt_id,
                    "",
                )
            }
        }
    }

    async fn subscribe(&mut self, ops: &mut impl Ops, f: &Frame, cfg: &StompConfig) -> Next {
        let receipt_id = f.header("receipt");
        let new = match read_subscribe(f, self.version, ops.project()) {
            Ok(n) => n,
            Err(e) => {
                let code = match e {
                    SubError::Destination(DestinationError::OtherProject) => CloseCode::Forbidden,
                    _ => {
                        count_malformed("subscribe");
                        CloseCode::ProtocolError
                    }
                };
                refused_metric(&e);
                return self.fail(code, &e.to_string(), receipt_id, "");
            }
        };
        let since = match resume_from(f) {
            Ok(s) => s,
            Err(why) => {
                count_malformed("subscribe");
                return self.fail(CloseCode::ProtocolError, why, receipt_id, "");
            }
        };
        if let Err(e) = self.subs.check(&new, &cfg.subs) {
            refused_metric(&e);
            let code = if e == SubError::TooMany {
                CloseCode::Forbidden
            } else {
                CloseCode::ProtocolError
            };
            return self.fail(code, &e.to_string(), receipt_id, "");
        }
        if since.is_some() && !ops.begin_resume(&new.destination) {
            metrics::counter!("herald_edge_stomp_subscribes_refused_total", "reason" => "not_recoverable")
                .increment(1);
            return self.fail(
                CloseCode::Forbidden,
                "this destination keeps no history: subscribe without offset and epoch",
                receipt_id,
                "",
            );
        }
        if let Destination::Group(g) = &new.destination {
            let member = self.subs.has_group(g.as_str())
                || self.is_token_group(g.as_str())
                || ops.is_member(g.as_str());
            if !member && let Err(r) = ops.join(g.as_str()).await {
                // One group too many is counted by the session, as for native clients.
                let label = match r {
                    JoinRefused::BadName => Some("bad_name"),
                    JoinRefused::NotAllowed => Some("not_allowed"),
                    JoinRefused::TooMany => None,
                };
                if let Some(reason) = label {
                    metrics::counter!("herald_edge_stomp_subscribes_refused_total", "reason" => reason)
                        .increment(1);
                }
                if since.is_some() {
                    ops.abandon_resume(&new.destination);
                }
                let (code, message) = match r {
                    JoinRefused::BadName => (CloseCode::ProtocolError, "invalid group name"),
                    JoinRefused::NotAllowed => (
                        CloseCode::Forbidden,
                        "the token's channels claim does not allow this group",
                    ),
                    JoinRefused::TooMany => {
                        (CloseCode::Forbidden, "too many groups on this connection")
                    }
                };
                return self.fail(code, message, receipt_id, "");
            }
        }
        let dest = since.map(|_| new.destination.clone());
        if let Err(e) = self.subs.add(new, &cfg.subs) {
            if let Some(d) = &dest {
                ops.abandon_resume(d);
            }
            return self.fail(CloseCode::ProtocolError, &e.to_string(), receipt_id, "");
        }
        match (since, dest) {
            // The receipt comes once the missed messages were sent.
            (Some((offset, epoch)), Some(d)) => {
                ops.resume(&d, offset, epoch, self.version, receipt_id)
            }
            _ => self.ok(ops, f),
        }
        Next::Continue
    }

    fn is_token_group(&self, g: &str) -> bool {
        self.token_groups.iter().any(|t| &**t == g)
    }

    /// The number of subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }
}

fn refused_metric(e: &SubError) {
    let reason = match e {
        SubError::TooMany => "too_many_subscriptions",
        SubError::Destination(DestinationError::OtherProject) => "other_project",
        SubError::Destination(_) => "destination",
        _ => "malformed",
    };
    metrics::counter!("herald_edge_stomp_subscribes_refused_total", "reason" => reason)
        .increment(1);
}

/// The `ERROR` for a `CONNECT` whose versions are all unknown, with the `version` header the
/// specification asks for.
fn no_common_version(message: &str) -> Bytes {
    let detail = "accept-version must list 1.0, 1.1 or 1.2.";
    crate::frame::text_frame(&format!(
        "ERROR\nversion:1.0,1.1,1.2\nmessage:{message}\ncontent-type:text/plain;charset=utf-8\ncontent-length:{}\n\n{detail}\0",
        detail.len()
    ))
}

/// Reads the first WebSocket message of a STOMP connection for the session layer.
pub(crate) fn hello(
    first: Message,
    cfg: &StompConfig,
) -> Result<crate::codec::Hello, crate::codec::HelloRefused> {
    let data: &[u8] = match &first {
        Message::Text(t) => t.as_str().as_bytes(),
        Message::Binary(b) => b,
        _ => return Err(crate::codec::HelloRefused::close(CloseCode::ProtocolError)),
    };
    match StompCodec::hello(data, cfg) {
        Ok(c) => Ok(crate::codec::Hello {
            token: c.token,
            project: None,
            codec: crate::codec::Codec::Stomp(Box::new(c.codec)),
            resume: Vec::new(),
            device: None,
        }),
        Err(r) => Err(crate::codec::HelloRefused {
            code: r.code,
            answer: Some(r.frame),
        }),
    }
}

/// Handles one client message of a live STOMP session.
pub(crate) async fn on_message(
    codec: &mut StompCodec,
    ops: &mut SessionOps<'_>,
    m: Message,
) -> crate::session::Next {
    let data: &[u8] = match &m {
        Message::Text(t) => t.as_str().as_bytes(),
        Message::Binary(b) => b,
        _ => return crate::session::Next::Continue,
    };
    let cfg = StompConfig::from_edge(ops.config());
    match codec.on_message(ops, data, &cfg).await {
        Next::Continue => crate::session::Next::Continue,
        Next::Close(code) => crate::session::Next::Close(code),
    }
}

impl Ops for SessionOps<'_> {
    fn push(&mut self, frame: Bytes) {
        SessionOps::push(self, frame);
    }

    fn project(&self) -> &str {
        SessionOps::project(self).as_str()
    }

    async fn join(&mut self, group: &str) -> Result<(), JoinRefused> {
        self.subscribe(group).await.map(drop).map_err(|e| match e {
            SubscribeRefused::BadName(_) => JoinRefused::BadName,
            SubscribeRefused::NotAllowed => JoinRefused::NotAllowed,
            SubscribeRefused::TooMany => JoinRefused::TooMany,
        })
    }

    fn leave(&mut self, group: &str) {
        let _ = self.unsubscribe(group);
    }

    fn is_member(&self, group: &str) -> bool {
        SessionOps::is_member(self, group)
    }

    fn begin_resume(&mut self, dest: &Destination) -> bool {
        SessionOps::begin_resume(self, &stream_of(dest)).is_some()
    }

    fn resume(
        &mut self,
        dest: &Destination,
        offset: u64,
        epoch: u32,
        version: Version,
        receipt: Option<&str>,
    ) {
        let stream = stream_of(dest);
        let Ok((kind, name, key)) =
            crate::resume::stream_of(&stream, SessionOps::project(self), self.user())
        else {
            return;
        };
        self.replay(
            0,
            stream,
            kind,
            name,
            key,
            Position { offset, epoch },
            Answer::Stomp {
                version,
                receipt: receipt.map(Box::from),
            },
        );
    }

    fn acknowledged(&mut self) {
        SessionOps::acknowledged(self);
    }

    fn abandon_resume(&mut self, dest: &Destination) {
        if let Ok((kind, name, _)) =
            crate::resume::stream_of(&stream_of(dest), SessionOps::project(self), self.user())
        {
            self.abandon_recovery(kind, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::stomp::encode::tests::unframe;
    use herald_core::proto::bus::{Envelope, TargetKind};

    #[derive(Default)]
    struct FakeOps {
        pushed: Vec<Bytes>,
        joined: Vec<String>,
        left: Vec<String>,
    }

    impl Ops for FakeOps {
        fn push(&mut self, frame: Bytes) {
            self.pushed.push(frame);
        }
        fn project(&self) -> &str {
            "demo"
        }
        async fn join(&mut self, group: &str) -> Result<(), JoinRefused> {
            match group {
                "secret" => Err(JoinRefused::NotAllowed),
                "full" => Err(JoinRefused::TooMany),
                g => {
                    self.joined.push(g.to_owned());
                    Ok(())
                }
            }
        }
        fn leave(&mut self, group: &str) {
            self.left.push(group.to_owned());
        }
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8_lossy(unframe(b)).into_owned()
    }

    fn connect(frame: &str) -> StompCodec {
        match StompCodec::hello(frame.as_bytes(), &StompConfig::default()) {
            Ok(c) => c.codec,
            Err(r) => panic!("refused: {}", text(&r.frame)),
        }
    }

    async fn send(c: &mut StompCodec, ops: &mut FakeOps, frame: &str) -> Next {
        c.on_message(ops, frame.as_bytes(), &StompConfig::default())
            .await
    }

    #[test]
    fn connect_gives_the_token_and_welcome_says_connected_then_receipt() {
        let cfg = StompConfig::default();
        let hello = StompCodec::hello(
            b"\nCONNECT\naccept-version:1.1,1.2\nheart-beat:5000,20000\npasscode:jwt\nreceipt:c1\n\n\0\n",
            &cfg,
        );
        let Ok(Connected { token, mut codec }) = hello else {
            panic!("refused")
        };
        assert_eq!(token.as_deref(), Some("jwt"));
        assert_eq!(codec.version(), Version::V12);
        assert_eq!(
            codec.heart_beat(),
            HeartBeat {
                send_ms: 20000,
                expect_ms: 10000
            }
        );
        let w = codec.welcome("edge-1-7", "alice", &["news"]);
        let s = String::from_utf8_lossy(&w).into_owned();
        assert!(s.contains("CONNECTED\nversion:1.2\nheart-beat:10000,10000\n"));
        assert!(s.ends_with("RECEIPT\nreceipt-id:c1\n\n\0"));
    }

    #[test]
    fn bad_first_messages_are_refused_with_an_error_frame() {
        let cfg = StompConfig::default();
        for (input, code, message) in [
            (
                &b"SUBSCRIBE\nid:1\ndestination:/topic/demo\n\n\0"[..],
                CloseCode::ProtocolError,
                "the first frame must be CONNECT or STOMP",
            ),
            (
                b"CONNECT\naccept-version:2.0\n\n\0",
                CloseCode::ProtocolError,
                "Supported protocol versions are 1.0,1.1,1.2",
            ),
            (
                b"CONNECT\n\n",
                CloseCode::ProtocolError,
                "expected one CONNECT frame",
            ),
            (
                b"CONNECT\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/demo\n\n\0",
                CloseCode::ProtocolError,
                "expected one CONNECT frame",
            ),
            (b"HELLO\n\n\0", CloseCode::ProtocolError, "unknown command"),
            (
                b"\xff\xfe",
                CloseCode::ProtocolError,
                "expected one CONNECT frame",
            ),
        ] {
            let Err(r) = StompCodec::hello(input, &cfg) else {
                panic!("accepted {input:?}")
            };
            assert_eq!(r.code, code);
            let t = text(&r.frame);
            assert!(t.starts_with("ERROR\n"), "{t}");
            assert!(t.contains(&format!("message:{message}\n")), "{t}");
        }
        let big = format!("CONNECT\n\n{}\0", "x".repeat(70_000));
        let Err(r) = StompCodec::hello(big.as_bytes(), &cfg) else {
            panic!("accepted")
        };
        assert_eq!(r.code, CloseCode::MessageTooBig);
    }

    #[test]
    fn refusals_of_the_token_name_the_reason() {
        let c = connect("CONNECT\naccept-version:1.2\nreceipt:r\n\n\0");
        let t = text(&c.refusal(CloseCode::TokenExpired));
        assert!(
            t.starts_with("ERROR\nmessage:token expired\nreceipt-id:r\n"),
            "{t}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn subscribe_joins_once_and_answers_receipts() {
        let mut c = connect("CONNECT\naccept-version:1.2\n\n\0");
        let _ = c.welcome("e-1", "alice", &["tok"]);
        let mut ops = FakeOps::default();
        let next = send(
            &mut c,
            &mut ops,
            "SUBSCRIBE\nid:0\ndestination:/topic/demo/news\nreceipt:r0\n\n\0SUBSCRIBE\nid:1\ndestination:/topic/demo/news\n\n\0SUBSCRIBE\nid:2\ndestination:/topic/demo/tok\nreceipt:r2\n\n\0\n",
        )
        .await;
        assert_eq!(next, Next::Continue);
        assert_eq!(
            ops.joined,
            ["news"],
            "one join per group, none for a token group"
        );
        let pushed: Vec<_> = ops.pushed.iter().map(text).collect();
        assert_eq!(
            pushed,
            [
                "RECEIPT\nreceipt-id:r0\n\n\0",
                "RECEIPT\nreceipt-id:r2\n\n\0"
            ]
        );
        // Leaving: the hub membership goes with the last subscription, token groups stay.
        ops.pushed.clear();
        send(&mut c, &mut ops, "UNSUBSCRIBE\nid:0\n\n\0").await;
        assert!(ops.left.is_empty());
        send(&mut c, &mut ops, "UNSUBSCRIBE\nid:1\nreceipt:u1\n\n\0").await;
        send(&mut c, &mut ops, "UNSUBSCRIBE\nid:2\n\n\0").await;
        assert_eq!(ops.left, ["news"]);
        assert_eq!(text(&ops.pushed[0]), "RECEIPT\nreceipt-id:u1\n\n\0");
        assert_eq!(c.subscriptions(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refused_frames_close_after_an_error_with_the_receipt() {
        let cases = [
            (
                "SUBSCRIBE\nid:0\ndestination:/topic/demo/secret\nreceipt:x\n\n\0",
                CloseCode::Forbidden,
                "message:the token's channels claim does not allow this group\nreceipt-id:x\n",
            ),
            (
                "SUBSCRIBE\nid:0\ndestination:/topic/demo/full\n\n\0",
                CloseCode::Forbidden,
                "message:too many groups on this connection\n",
            ),
            (
                "SUBSCRIBE\nid:0\ndestination:/topic/other/g\n\n\0",
                CloseCode::Forbidden,
                "message:destination names another project\n",
            ),
            (
                "SUBSCRIBE\nid:0\ndestination:/queue/x\n\n\0",
                CloseCode::ProtocolError,
                "message:unknown destination",
            ),
            (
                "SUBSCRIBE\ndestination:/topic/demo\n\n\0",
                CloseCode::ProtocolError,
                "message:missing id header\n",
            ),
            (
                "SEND\ndestination:/topic/demo/g\nreceipt:s\n\nhello\0",
                CloseCode::PublishNotAllowed,
                "message:SEND is not allowed\nreceipt-id:s\n",
            ),
            (
                "BEGIN\ntransaction:t\n\n\0",
                CloseCode::ProtocolError,
                "message:transactions are not supported\n",
            ),
            (
                "CONNECT\n\n\0",
                CloseCode::ProtocolError,
                "message:already connected\n",
            ),
            (
                "ACK\n\n\0",
                CloseCode::ProtocolError,
                "message:missing the header naming the message\n",
            ),
            (
                "UNSUBSCRIBE\n\n\0",
                CloseCode::ProtocolError,
                "message:missing id header\n",
            ),
            (
                "SUBSCRIBE\nid:a\\q\n\n\0",
                CloseCode::ProtocolError,
                "message:undefined escape sequence in a header\n",
            ),
            (
                "FOO\n\n\0",
                CloseCode::ProtocolError,
                "message:unknown command\n",
            ),
        ];
        for (frame, code, want) in cases {
            let mut c = connect("CONNECT\naccept-version:1.2\n\n\0");
            let mut ops = FakeOps::default();
            assert_eq!(
                send(&mut c, &mut ops, frame).await,
                Next::Close(code),
                "{frame}"
            );
            let last = c.closing(code, 0).expect("an ERROR before the close");
            let t = text(&last);
            assert!(t.starts_with("ERROR\n") && t.contains(want), "{frame}: {t}");
            assert!(
                c.closing(code, 0)
                    .is_some_and(|b| text(&b).starts_with("ERROR\nmessage:"))
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn disconnect_answers_its_receipt_before_a_normal_close() {
        let mut c = connect("CONNECT\naccept-version:1.2\n\n\0");
        let mut ops = FakeOps::default();
        let next = send(&mut c, &mut ops, "DISCONNECT\nreceipt:77\n\n\0").await;
        assert_eq!(next, Next::Close(CloseCode::Normal));
        let last = c.closing(CloseCode::Normal, 0).expect("the receipt");
        assert_eq!(text(&last), "RECEIPT\nreceipt-id:77\n\n\0");
        assert!(c.closing(CloseCode::Normal, 0).is_none());
        // Server-initiated closes say why.
        let t = text(&c.closing(CloseCode::GoingAway, 3000).expect("error"));
        assert!(
            t.starts_with("ERROR\nmessage:server shutting down\n")
                && t.ends_with("\n\nreconnect after 3000 ms\0"),
            "{t}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn acks_release_held_messages_through_the_session() {
        let cfg = StompConfig {
            subs: SubLimits {
                max_inflight: 1,
                ..SubLimits::default()
            },
            ..StompConfig::default()
        };
        let mut c = connect("CONNECT\naccept-version:1.2\n\n\0");
        let mut ops = FakeOps::default();
        c.on_message(
            &mut ops,
            b"SUBSCRIBE\nid:s\ndestination:/user/queue/q\nack:client-individual\n\n\0",
            &cfg,
        )
        .await;
        let env = |id: &str| Envelope {
            version: 1,
            project: "demo".into(),
            kind: TargetKind::User as i32,
            name: "alice".into(),
            message_id: id.into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        let mut q: VecDeque<Bytes> = ["m1", "m2"]
            .iter()
            .filter_map(|id| crate::codec::stomp::message::encode(&env(id)))
            .collect();
        c.render(&mut q).expect("within bounds");
        assert_eq!(
            q.len(),
            2,
            "one message (head and shared part); the other waits"
        );
        let next = c
            .on_message(&mut ops, b"ACK\nid:1\nreceipt:a\n\n\0", &cfg)
            .await;
        assert_eq!(next, Next::Continue);
        assert_eq!(ops.pushed.len(), 3, "m2 (two pieces) then the receipt");
        let m2: Vec<u8> = [ops.pushed[0].clone(), ops.pushed[1].clone()].concat();
        let t = String::from_utf8_lossy(unframe(&m2)).into_owned();
        assert!(
            t.contains("ack:2\n") && t.contains("message-id:m2\n"),
            "{t}"
        );
        assert_eq!(text(&ops.pushed[2]), "RECEIPT\nreceipt-id:a\n\n\0");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_split_across_messages_are_joined() {
        let mut c = connect("CONNECT\naccept-version:1.2\n\n\0");
        let mut ops = FakeOps::default();
        assert_eq!(
            send(&mut c, &mut ops, "SUBSCRIBE\nid:0\ndestina").await,
            Next::Continue
        );
        assert!(ops.joined.is_empty());
        assert_eq!(
            send(&mut c, &mut ops, "tion:/topic/demo/g\n\n\0").await,
            Next::Continue
        );
        assert_eq!(ops.joined, ["g"]);
    }
}
