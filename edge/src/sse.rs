//! Server-Sent Events: the native protocol on a one-way `text/event-stream` response
//! (`GET /sse/{project}`), a transport under the one session layer ([`crate::transport`]: its
//! `Link::Sse` and `Framing::EventStream`).
//!
//! Every native server frame travels as one event whose `data:` is the frame's JSON, the same
//! text a WebSocket client gets; the session's own frames (`welcome`, `error`, `resumed`...) are
//! reframed from their WebSocket framing ([`reframe`]). A delivery is encoded once for every
//! SSE recipient ([`message_event`]): a plain message as a finished event; a message of a
//! recoverable stream as a template whose head (stream, epoch, offset) the connection reads to
//! note its position, then writes the shared `data:` lines followed by its own
//! `id: <every stream's position>` line ([`SseLink::render`]). `Last-Event-ID` is that id: on
//! reconnect it names every stream to resume ([`Positions::parse`]). Heartbeats are comments
//! (`:`) at the ping interval; the server's close is an `event: close` with the close code.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::codes::CloseCode;
use herald_core::ids::GroupId;
use herald_core::proto::bus::{Envelope, TargetKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;

use crate::listener::Stream;
use crate::protocol::{Position, Since, StreamOf};
use crate::transport::{Inbound, WriteQueue};
use crate::ws::{self, CloseOutcome};

/// The first byte of a delivery template (never the first byte of an event or a WebSocket
/// frame).
const TEMPLATE: u8 = 0;
/// A template's head before the name: marker, kind, epoch (4), offset (8), name length (1).
const TEMPLATE_HEAD: usize = 15;
/// The version tag that starts every id this server issues.
const ID_VERSION: &str = "h1";

/// The heartbeat: an SSE comment, ignored by clients, that keeps proxies and the client's idle
/// timers from closing a quiet stream.
pub(crate) fn heartbeat() -> Bytes {
    Bytes::from_static(b":\n\n")
}

/// The answer starting the stream. `origin`: the request's `Origin`, which passed the
/// project's origin list, echoed for cross-origin `EventSource`s.
pub(crate) fn response_head(origin: Option<&str>) -> Bytes {
    let mut h = String::with_capacity(256);
    h.push_str(
        "HTTP/1.1 200 OK\r\n\
         content-type: text/event-stream; charset=utf-8\r\n\
         cache-control: no-cache, no-store\r\n\
         x-accel-buffering: no\r\n\
         connection: close\r\n",
    );
    // An origin with bytes that cannot go into a header is not echoed (the browser then
    // refuses the cross-origin stream).
    if let Some(o) = origin.filter(|o| o.bytes().all(|b| b.is_ascii_graphic())) {
        h.push_str("access-control-allow-origin: ");
        h.push_str(o);
        h.push_str("\r\naccess-control-allow-credentials: true\r\nvary: origin\r\n");
    }
    h.push_str("\r\n");
    Bytes::from(h)
}

/// Appends `text` as `data:` lines (one per line of it: JSON whitespace may hold line breaks,
/// which a client joins back with `\n`).
fn push_data(out: &mut BytesMut, text: &[u8]) {
    let mut rest = text;
    loop {
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match end {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                return;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// One finished event holding `text` (a native frame's JSON).
pub(crate) fn data_event(text: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(text.len() + 8);
    push_data(&mut b, text);
    b.put_u8(b'\n');
    b.freeze()
}

/// Encodes a delivered message once for every SSE recipient: a finished `data:` event, or for a
/// message of a recoverable stream (with an offset) a template that [`SseLink::render`]
/// finishes per connection with its `id:` line.
pub(crate) fn message_event(env: &Envelope) -> Bytes {
    let json = crate::frame::message_json(env);
    if env.seq == 0 {
        return data_event(json.as_bytes());
    }
    let name = env.name.as_bytes();
    let name = &name[..name.len().min(u8::MAX as usize)];
    let mut b = BytesMut::with_capacity(TEMPLATE_HEAD + name.len() + json.len() + 8);
    b.put_u8(TEMPLATE);
    b.put_u8(kind_tag(env.kind()));
    b.put_u32_le(env.epoch);
    b.put_u64_le(env.seq);
    b.put_u8(name.len() as u8);
    b.put_slice(name);
    push_data(&mut b, json.as_bytes());
    b.freeze()
}

/// The letter of a stream kind in templates and ids.
fn kind_tag(kind: TargetKind) -> u8 {
    match kind {
        TargetKind::Group => b'g',
        TargetKind::User => b'u',
        _ => b'b',
    }
}

/// Turns a protocol's WebSocket-framed frame into the event carrying it: a text frame into a
/// `data:` event, a ping into a heartbeat. Anything else is already an event (or the response
/// head) and passes as it is.
pub(crate) fn reframe(b: Bytes) -> Bytes {
    match b.first() {
        Some(0x81) => match crate::frame::parse_server(&b) {
            Some((_, text, _)) => data_event(text),
            None => b,
        },
        Some(0x89) => heartbeat(),
        _ => b,
    }
}

/// Whether an event continues in the next piece: the shared `data:` lines of a template, which
/// the connection's `id:` line ends.
pub(crate) fn continues(piece: &[u8]) -> bool {
    piece.ends_with(b"\n") && !piece.ends_with(b"\n\n")
}

/// The server's last event: `event: close` with the close code (and the reconnect hint as the
/// client's reconnection time).
pub(crate) fn close_event(code: CloseCode, reconnect_after_ms: u32) -> Bytes {
    let mut s = String::with_capacity(96);
    if reconnect_after_ms > 0 {
        let _ = writeln!(s, "retry: {reconnect_after_ms}");
    }
    let _ = write!(
        s,
        "event: close\ndata: {{\"code\":{},\"reason\":",
        code.code()
    );
    crate::frame::push_json_string(&mut s, code.reason());
    let _ = write!(s, ",\"reconnect_after_ms\":{reconnect_after_ms}}}\n\n");
    Bytes::from(s)
}

/// Why a `Last-Event-ID` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEventId {
    /// Not an id this server issued.
    #[error("Last-Event-ID is not an id issued by this server")]
    Unreadable,
    /// More streams than a connection can hold.
    #[error("Last-Event-ID names too many streams")]
    TooMany,
}

/// A stream's position in an id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pos {
    /// `b'g'`, `b'u'` or `b'b'`.
    kind: u8,
    epoch: u32,
    offset: u64,
    /// The group (empty for the user stream and the broadcasts).
    name: Box<str>,
}

/// Where a connection stands on each of its recoverable streams, as last sent to it: what its
/// event ids carry. Empty (no allocation) until a message of a recoverable stream is sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Positions(Vec<Pos>);

impl Positions {
    /// Reads an id this server issued (`Last-Event-ID`): at most `max` streams.
    pub(crate) fn parse(id: &str, max: usize) -> Result<Self, BadEventId> {
        let mut parts = id.trim().split('.');
        if parts.next() != Some(ID_VERSION) {
            return Err(BadEventId::Unreadable);
        }
        let mut out = Positions::default();
        for entry in parts {
            let fields: Vec<&str> = entry.split(':').collect();
            let (kind, name, epoch, offset) = match fields.as_slice() {
                ["b", e, o] => (b'b', "", e, o),
                ["u", e, o] => (b'u', "", e, o),
                ["g", g, e, o] => {
                    GroupId::validate(g).map_err(|_| BadEventId::Unreadable)?;
                    (b'g', *g, e, o)
                }
                _ => return Err(BadEventId::Unreadable),
            };
            let epoch = epoch.parse().map_err(|_| BadEventId::Unreadable)?;
            let offset = offset.parse().map_err(|_| BadEventId::Unreadable)?;
            out.note(kind, name, epoch, offset);
            if out.0.len() > max {
                return Err(BadEventId::TooMany);
            }
        }
        Ok(out)
    }

    /// Keeps the streams of the connection (its user stream, the broadcasts and `groups`) and
    /// returns them as streams to resume.
    pub(crate) fn resume(&mut self, groups: &[GroupId]) -> Vec<Since> {
        self.0
            .retain(|p| p.kind != b'g' || groups.iter().any(|g| g.as_str() == &*p.name));
        self.0
            .iter()
            .map(|p| Since {
                stream: match p.kind {
                    b'g' => StreamOf::Group(p.name.to_string()),
                    b'u' => StreamOf::User,
                    _ => StreamOf::Broadcast,
                },
                position: Position {
                    offset: p.offset,
                    epoch: p.epoch,
                },
            })
            .collect()
    }

    /// Notes a stream's position.
    fn note(&mut self, kind: u8, name: &str, epoch: u32, offset: u64) {
        let name = if kind == b'g' { name } else { "" };
        match self
            .0
            .iter_mut()
            .find(|p| p.kind == kind && &*p.name == name)
        {
            Some(p) => {
                p.epoch = epoch;
                p.offset = offset;
            }
            None => self.0.push(Pos {
                kind,
                epoch,
                offset,
                name: name.into(),
            }),
        }
    }

    /// The id carrying every position: `h1.<kind>[:<group>]:<epoch>:<offset>...`. Opaque to
    /// clients (docs/protocol.md).
    pub(crate) fn id(&self) -> String {
        let mut s = String::with_capacity(4 + self.0.len() * 24);
        s.push_str(ID_VERSION);
        for p in &self.0 {
            s.push('.');
            s.push(p.kind as char);
            if p.kind == b'g' {
                s.push(':');
                s.push_str(&p.name);
            }
            let _ = write!(s, ":{}:{}", p.epoch, p.offset);
        }
        s
    }

    /// Reads a template's head and notes its position; the template's event bytes start at the
    /// returned index.
    fn take_template(&mut self, t: &[u8]) -> Option<usize> {
        let head = t.get(..TEMPLATE_HEAD)?;
        let kind = head[1];
        let epoch = u32::from_le_bytes(head[2..6].try_into().ok()?);
        let offset = u64::from_le_bytes(head[6..14].try_into().ok()?);
        let end = TEMPLATE_HEAD + usize::from(head[14]);
        let name = std::str::from_utf8(t.get(TEMPLATE_HEAD..end)?).ok()?;
        self.note(kind, name, epoch, offset);
        Some(end)
    }

    /// Notes the position a `resumed` frame announces (a stream whose epoch changed resumes
    /// from there next time).
    fn note_resumed(&mut self, json: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Resumed<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            #[serde(default)]
            group: Option<&'a str>,
            #[serde(default)]
            user: bool,
            epoch: u32,
            offset: u64,
        }
        let Ok(r) = serde_json::from_slice::<Resumed<'_>>(json) else {
            return;
        };
        if r.kind != "resumed" || r.offset == 0 {
            return;
        }
        match (r.group, r.user) {
            (Some(g), _) => self.note(b'g', g, r.epoch, r.offset),
            (None, true) => self.note(b'u', "", r.epoch, r.offset),
            (None, false) => self.note(b'b', "", r.epoch, r.offset),
        }
    }
}

/// A live Server-Sent Events stream: the socket and the positions its ids carry.
pub(crate) struct SseLink {
    pub(crate) tcp: Stream,
    positions: Positions,
}

impl SseLink {
    /// A stream over `tcp` whose ids start from `positions` (those of `Last-Event-ID` that are
    /// resumed).
    pub(crate) fn new(tcp: Stream, positions: Positions) -> Self {
        Self { tcp, positions }
    }

    /// Finishes the frames just taken from the hub ([`render_frames`]).
    pub(crate) fn render(&mut self, frames: &mut VecDeque<Bytes>) {
        render_frames(&mut self.positions, frames);
    }

    /// Watches the client's side: it sends nothing after its request, so its end (EOF, reset)
    /// is the connection's end and any byte is a protocol error.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        let mut buf = [0u8; 16];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.tcp).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Inbound::Closed),
            Poll::Ready(Ok(())) => Poll::Ready(Inbound::Failed(Some(CloseCode::ProtocolError))),
            Poll::Ready(Err(_)) => Poll::Ready(Inbound::Failed(None)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Finishes the frames just taken from the hub for one connection at `positions`: templates get
/// the connection's `id:` line after their shared `data:` lines, the session's WebSocket-framed frames become events.
pub(crate) fn render_frames(positions: &mut Positions, frames: &mut VecDeque<Bytes>) {
    if !frames
        .iter()
        .any(|f| matches!(f.first(), Some(&(TEMPLATE | 0x81 | 0x89))))
    {
        return;
    }
    let mut out = VecDeque::with_capacity(frames.len() + 8);
    for f in frames.drain(..) {
        match f.first() {
            Some(&TEMPLATE) => {
                let Some(at) = positions.take_template(&f) else {
                    continue;
                };
                out.push_back(f.slice(at..));
                let mut id = String::with_capacity(8 + positions.0.len() * 24);
                id.push_str("id: ");
                id.push_str(&positions.id());
                id.push_str("\n\n");
                out.push_back(Bytes::from(id));
            }
            Some(0x81) => {
                if let Some((_, text, _)) = crate::frame::parse_server(&f)
                    && text.starts_with(br#"{"type":"resumed""#)
                {
                    positions.note_resumed(text);
                }
                out.push_back(reframe(f));
            }
            _ => out.push_back(reframe(f)),
        }
    }
    *frames = out;
}

/// Sends what `q` holds, then `event: close` with `code`, ends the response and waits (within
/// the close timeout) for the client to go. Counted like a WebSocket close.
pub(crate) async fn close_and_finish(
    l: &mut SseLink,
    q: &mut WriteQueue,
    code: CloseCode,
    reconnect_after_ms: u32,
    close_timeout: Duration,
    protocol: &'static str,
) {
    q.push_framed(close_event(code, reconnect_after_ms));
    let tcp = &mut l.tcp;
    let mut sent = false;
    let _ = timeout(close_timeout, async {
        let flushed = q.flush(tcp).await;
        sent = true;
        ws::count_close(code, CloseOutcome::Sent, protocol);
        flushed?;
        tcp.shutdown().await?;
        // The client closes once the stream ends; drain until it does, so nothing it sent
        // turns our end into a reset that could lose the last event.
        let mut sink = [0u8; 64];
        while tcp.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
    if !sent {
        ws::count_close(code, CloseOutcome::Unsent, protocol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kind: TargetKind, name: &str, seq: u64, payload: &[u8]) -> Envelope {
        Envelope {
            version: 1,
            project: "p".into(),
            kind: kind as i32,
            name: name.into(),
            payload: payload.to_vec(),
            seq,
            epoch: if seq == 0 { 0 } else { 7 },
            ..Default::default()
        }
    }

    fn link() -> Positions {
        Positions::default()
    }

    fn render(p: &mut Positions, frames: Vec<Bytes>) -> Vec<u8> {
        let mut q: VecDeque<Bytes> = frames.into();
        render_frames(p, &mut q);
        q.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn a_plain_message_is_one_shared_event() {
        let e = message_event(&env(TargetKind::Broadcast, "", 0, br#"{"x":1}"#));
        assert_eq!(
            &e[..],
            b"data: {\"type\":\"msg\",\"kind\":\"broadcast\",\"data\":{\"x\":1}}\n\n"
        );
        let mut p = link();
        assert_eq!(render(&mut p, vec![e.clone()]), e.to_vec());
    }

    #[test]
    fn line_breaks_in_json_become_data_lines() {
        let e = message_event(&env(
            TargetKind::Broadcast,
            "",
            0,
            b"{\"x\":\r\n1,\n\"y\":\r2}",
        ));
        let text = std::str::from_utf8(&e).expect("utf8");
        assert!(text.ends_with("\n\n"));
        let joined: Vec<&str> = text
            .trim_end()
            .lines()
            .map(|l| l.strip_prefix("data: ").expect("data line"))
            .collect();
        let v: serde_json::Value = serde_json::from_str(&joined.join("\n")).expect("json");
        assert_eq!(v["data"]["y"], 2);
    }

    #[test]
    fn recoverable_messages_carry_every_position_in_their_id() {
        let mut p = link();
        let g = message_event(&env(TargetKind::Group, "news", 3, b"1"));
        let u = message_event(&env(TargetKind::User, "alice", 9, b"2"));
        let out = render(&mut p, vec![g.clone(), u]);
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "data: {\"type\":\"msg\",\"kind\":\"group\",\"group\":\"news\",\"offset\":3,\"epoch\":7,\"data\":1}\n\
             id: h1.g:news:7:3\n\n\
             data: {\"type\":\"msg\",\"kind\":\"user\",\"user\":\"alice\",\"offset\":9,\"epoch\":7,\"data\":2}\n\
             id: h1.g:news:7:3.u:7:9\n\n"
        );
        // The template itself is untouched: shared by every recipient.
        assert_eq!(g[0], TEMPLATE);
        let back = Positions::parse("h1.g:news:7:3.u:7:9", 10).expect("parse");
        assert_eq!(back, p);
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(Positions::parse("nope", 10), Err(BadEventId::Unreadable));
        assert_eq!(
            Positions::parse("h1.g:a b:1:2", 10),
            Err(BadEventId::Unreadable)
        );
        assert_eq!(
            Positions::parse("h1.x:1:2", 10),
            Err(BadEventId::Unreadable)
        );
        assert_eq!(
            Positions::parse("h1.g:a:1:2.g:b:1:2", 1),
            Err(BadEventId::TooMany)
        );
        let mut p = Positions::parse("h1.b:1:5.g:a:1:2.g:b:1:4", 10).expect("parse");
        let resumed = p.resume(&[GroupId::new("b").expect("id")]);
        assert_eq!(resumed.len(), 2, "a group not joined is not resumed");
        assert_eq!(p.id(), "h1.b:1:5.g:b:1:4");
    }

    #[test]
    fn session_frames_are_reframed_and_resumed_moves_the_position() {
        let mut p = Positions::parse("h1.g:news:1:2", 10).expect("parse");
        let resumed = crate::protocol::resumed(0, &StreamOf::Group("news".into()), 9, 40, false);
        let out = render(
            &mut p,
            vec![
                resumed,
                crate::frame::ping_frame(),
                crate::protocol::pong(3),
            ],
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "data: {\"type\":\"resumed\",\"id\":0,\"group\":\"news\",\"epoch\":9,\"offset\":40,\"recovered\":false}\n\n\
             :\n\n\
             data: {\"type\":\"pong\",\"id\":3}\n\n"
        );
        assert_eq!(p.id(), "h1.g:news:9:40");
    }

    #[test]
    fn close_event_names_the_code() {
        let e = close_event(CloseCode::TokenExpired, 0);
        assert_eq!(
            &e[..],
            b"event: close\ndata: {\"code\":4005,\"reason\":\"token expired\",\"reconnect_after_ms\":0}\n\n"
        );
        let e = close_event(CloseCode::GoingAway, 1500);
        assert!(e.starts_with(b"retry: 1500\nevent: close\n"));
    }
}
