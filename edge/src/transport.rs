//! Transports: how a session's bytes reach its client and how the client's frames come back.
//!
//! The session layer ([`crate::session`]: admission, auth, targets, limits, queues, metrics) is
//! one for every protocol and every transport. A transport is the [`Link`] a session holds and
//! the [`Framing`] its [`WriteQueue`] writes in; everything that differs between transports is
//! decided here, in one place:
//!
//! - **WebSocket** ([`crate::ws`], [`Link::Ws`]): frames both ways on one socket; tungstenite
//!   reads the client's frames and answers pings and closes, the connection writes pre-framed
//!   bytes. Every protocol, and SockJS's `websocket` transport ([`Framing::SockJsWebSocket`]:
//!   the codec's frames in SockJS frames, client messages SockJS arrays).
//! - **Server-Sent Events** ([`crate::sse`], [`Link::Sse`], [`Framing::EventStream`]): a
//!   one-way `text/event-stream` response of the native protocol; the client sends nothing on
//!   it (its end is the connection's end).
//! - **SockJS over HTTP requests** ([`crate::sockjs::http`], [`Link::Http`]): `xhr_streaming`,
//!   `eventsource` and `xhr` polling responses, client messages from `xhr_send` requests.
//!
//! What a transport provides:
//!
//! 1. Deliveries in the [`crate::codec::Form`] of its connections: a message is encoded **once
//!    per form** and every recipient of that form gets the same [`Bytes`]. Per-connection parts
//!    (SSE: the `id:` line carrying the connection's stream positions) are added as separate
//!    pieces by [`Link::frame_taken`], never by copying the shared bytes.
//! 2. The framing of the codec's own frames (which are WebSocket frames: `welcome`, `error`,
//!    `CONNECTED`, pings...): [`WriteQueue::push`] and [`Link::frame_taken`] turn them into the
//!    transport's framing before anything is written.
//! 3. Heartbeats on one-way transports ([`Framing::one_way`]): the hub sends its ping at the
//!    ping interval and expects no pong; the framing turns it into an SSE comment or a SockJS
//!    `h` frame.
//! 4. Frame boundaries for [`WriteQueue`] (a frame begun is finished before a close).
//! 5. Reading ([`Link::poll_read`]), closing ([`Link::close`]: the protocol's last words in
//!    the transport's terms) and refusing before the session starts ([`Link::refuse`]: an HTTP
//!    status where no response has begun, a close frame otherwise).
//!
//! Every queued frame of a connection leaves in one vectored write ([`WriteQueue::poll_write`])
//! whatever the transport.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use herald_core::codes::CloseCode;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Shared;
use crate::admission::Refused;
use crate::listener::Stream;
use crate::sockjs::http::{HttpLink, LinkEvent};
use crate::sockjs::{self, frame as sjs};
use crate::sse::{self, SseLink};
use crate::ws::{self, WsLink};

/// Most frames written in one vectored write.
const MAX_IOVECS: usize = 64;

/// How a connection's bytes are framed on the wire (and so the form deliveries take for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Framing {
    /// WebSocket frames.
    #[default]
    WebSocket,
    /// Server-Sent Events (`text/event-stream`) on a one-way HTTP response.
    EventStream,
    /// SockJS frames, each in a WebSocket text frame (SockJS's `websocket` transport).
    SockJsWebSocket,
    /// SockJS frames, each on a line of an HTTP response (`xhr_streaming`, `xhr` polling).
    SockJsXhr,
    /// SockJS frames, each in an event of an HTTP response (`eventsource`).
    SockJsEventSource,
}

impl Framing {
    /// Whether the client cannot answer a ping on this transport: the hub sends its ping as a
    /// heartbeat at the ping interval and expects no pong.
    pub fn one_way(self) -> bool {
        matches!(
            self,
            Framing::EventStream | Framing::SockJsXhr | Framing::SockJsEventSource
        )
    }

    /// The SockJS framing, on a SockJS transport.
    pub(crate) fn sockjs(self) -> Option<sjs::Framing> {
        match self {
            Framing::SockJsWebSocket => Some(sjs::Framing::WebSocket),
            Framing::SockJsXhr => Some(sjs::Framing::Xhr),
            Framing::SockJsEventSource => Some(sjs::Framing::EventSource),
            Framing::WebSocket | Framing::EventStream => None,
        }
    }

    /// The framing of a SockJS transport.
    pub(crate) fn of_sockjs(t: sockjs::Transport) -> Self {
        match t.framing() {
            sjs::Framing::WebSocket => Framing::SockJsWebSocket,
            sjs::Framing::Xhr => Framing::SockJsXhr,
            sjs::Framing::EventSource => Framing::SockJsEventSource,
        }
    }
}

/// A session's transport: the stream (or the requests) and what reading and writing it needs.
// It lives inside the boxed session, one allocation per connection (a WebSocket's frame reader
// is boxed only while it reads); the rare SockJS HTTP link, which outlives its requests, is
// boxed.
pub(crate) enum Link {
    /// A WebSocket: every protocol, and SockJS's `websocket` transport.
    Ws(WsLink),
    /// A Server-Sent Events response.
    Sse(SseLink),
    /// SockJS over HTTP requests.
    Http(Box<HttpLink>),
}

/// What reading a link gave.
pub(crate) enum Inbound {
    /// A client message.
    Message(Message),
    /// Nothing to read now, but something to write first (WebSocket pongs, a SockJS request
    /// taken over), or a message that carried nothing (an empty SockJS array): poll again.
    Again,
    /// The client is gone (EOF, reset, its close, no SockJS request within the delay).
    Closed,
    /// The client broke the transport's rules: close with this code (`None`: just drop it).
    Failed(Option<CloseCode>),
}

impl Link {
    /// Whether the client negotiated `permessage-deflate` (WebSocket only).
    pub(crate) fn deflates(&self) -> bool {
        matches!(self, Link::Ws(l) if l.inflate.is_some())
    }

    /// The socket of a link that has one for its whole life.
    fn stream(&mut self) -> Option<&mut Stream> {
        match self {
            Link::Ws(l) => Some(&mut l.tcp),
            Link::Sse(l) => Some(&mut l.tcp),
            Link::Http(_) => None,
        }
    }

    /// The SockJS transport's metric label, on a SockJS session framed as `framing`.
    pub(crate) fn sockjs_label(&self, framing: Framing) -> Option<&'static str> {
        match self {
            Link::Http(l) => Some(l.transport().label()),
            _ if framing == Framing::SockJsWebSocket => Some(sockjs::Transport::WebSocket.label()),
            _ => None,
        }
    }

    /// Moves what the transport itself must write (WebSocket pongs, close answers) to `q`.
    pub(crate) fn take_ctl(&mut self, q: &mut WriteQueue) {
        if let Link::Ws(l) = self {
            l.take_ctl(q);
        }
    }

    /// Frames for the transport what was just taken from the hub into `q` (after the codec's
    /// own rendering): the codec's WebSocket frames become SockJS frames or events, SSE
    /// templates get the connection's `id:` line. The queue held nothing else.
    #[inline]
    pub(crate) fn frame_taken(&mut self, q: &mut WriteQueue) {
        match (q.framing, self) {
            (Framing::WebSocket, _) => {}
            (Framing::EventStream, Link::Sse(l)) => l.render(&mut q.frames),
            (f, _) => {
                if let Some(f) = f.sockjs() {
                    sjs::wrap_batch(&mut q.frames, f);
                }
            }
        }
    }

    /// Writes what `q` holds; ready once all of it is written (on SockJS over HTTP, also once
    /// nothing can be written: no request to write to).
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        q: &mut WriteQueue,
    ) -> Poll<io::Result<()>> {
        match self {
            Link::Ws(l) => q.poll_write(&mut l.tcp, cx),
            Link::Sse(l) => q.poll_write(&mut l.tcp, cx),
            Link::Http(l) => l.poll_write(cx, q).map(Ok),
        }
    }

    /// Reads the client's next message; `Pending` with the waker registered.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        shared: &Shared,
        framing: Framing,
    ) -> Poll<Inbound> {
        match self {
            Link::Ws(l) => {
                let read = ready!(l.poll_read(cx, &shared.ws_config));
                Poll::Ready(match read {
                    Inbound::Message(m) if framing.sockjs().is_some() => match sockjs_message(m) {
                        Ok(Some(m)) => Inbound::Message(m),
                        Ok(None) => Inbound::Again,
                        Err(code) => Inbound::Failed(Some(code)),
                    },
                    other => other,
                })
            }
            Link::Sse(l) => l.poll_read(cx),
            Link::Http(l) => Poll::Ready(match ready!(l.poll_read(cx)) {
                Some(LinkEvent::Message(m)) => Inbound::Message(Message::Text(m.into())),
                Some(LinkEvent::Gone) => Inbound::Closed,
                None => Inbound::Again,
            }),
        }
    }

    /// Reads the client's next data message before the session is live (the protocol's connect
    /// frame), writing what `q` holds first; the close code when the client cannot go on.
    pub(crate) async fn read_first(
        &mut self,
        q: &mut WriteQueue,
        ws_config: &WebSocketConfig,
    ) -> Result<Message, CloseCode> {
        match self {
            Link::Ws(l) => loop {
                let (tcp, reader, inflate) = l.parts(ws_config);
                if !q.frames.is_empty() {
                    q.flush(tcp).await.map_err(|_| CloseCode::AuthRequired)?;
                }
                let m = ws::read_first(tcp, &mut reader.ctx, &mut reader.track, inflate)
                    .await
                    .map_err(|e| ws::read_error_code(&e).unwrap_or(CloseCode::AuthRequired))?;
                if q.framing.sockjs().is_none() {
                    return Ok(m);
                }
                if let Some(m) = sockjs_message(m)? {
                    return Ok(m);
                }
            },
            // The client sends nothing on a stream: it authenticates with its request.
            Link::Sse(_) => Err(CloseCode::AuthRequired),
            Link::Http(l) => l
                .next_message(q)
                .await
                .map(|m| Message::Text(m.into()))
                .ok_or(CloseCode::AuthRequired),
        }
    }

    /// The client closed: what is left to write (WebSocket control frames, a close answer)
    /// goes within the close timeout.
    pub(crate) async fn peer_closed(&mut self, shared: &Shared, q: &mut WriteQueue) {
        self.take_ctl(q);
        if let Some(tcp) = self.stream() {
            let close_timeout = Duration::from_millis(shared.cfg.close_timeout_ms);
            let _ = tokio::time::timeout(close_timeout, q.flush(tcp)).await;
        }
    }

    /// Closes a live session: what `q` holds (the protocol's last words) goes first, then the
    /// transport's close (a WebSocket close frame, a SockJS close frame, an `event: close`),
    /// within the close timeout; counted under `herald_edge_closes_total` by `protocol`.
    pub(crate) async fn close(
        &mut self,
        shared: &Shared,
        q: &mut WriteQueue,
        code: CloseCode,
        reconnect_after_ms: u32,
        protocol: &'static str,
    ) {
        let close_timeout = Duration::from_millis(shared.cfg.close_timeout_ms);
        match self {
            Link::Ws(l) => {
                if let Some(f) = q.framing.sockjs() {
                    q.push_framed(sjs::framed(f, &sjs::close(code.code(), code.reason())));
                }
                let (tcp, reader, inflate) = l.parts(&shared.ws_config);
                ws::close_and_finish(
                    tcp,
                    &mut reader.ctx,
                    inflate,
                    q,
                    code,
                    close_timeout,
                    protocol,
                )
                .await;
            }
            Link::Sse(l) => {
                sse::close_and_finish(l, q, code, reconnect_after_ms, close_timeout, protocol).await
            }
            Link::Http(l) => {
                let deadline = tokio::time::Instant::now() + close_timeout;
                let sent = l.close(q, code.code(), code.reason(), deadline).await;
                let outcome = if sent {
                    ws::CloseOutcome::Sent
                } else {
                    ws::CloseOutcome::Unsent
                };
                ws::count_close(code, outcome, protocol);
            }
        }
    }

    /// Refuses a client whose session cannot start, counted under `protocol`: an HTTP status
    /// where no response has begun (Server-Sent Events), else the protocol's `answer` (a
    /// `CONNACK` with its return code, a STOMP `ERROR`) and the transport's close.
    pub(crate) async fn refuse(
        &mut self,
        shared: &Shared,
        q: &mut WriteQueue,
        answer: Option<Bytes>,
        refused: &Refused,
        protocol: &'static str,
    ) {
        if let Link::Sse(l) = self {
            refused.answer_http(shared, &mut l.tcp, protocol).await;
            return;
        }
        refused.count(protocol);
        if let Some(answer) = answer {
            q.push(answer);
        }
        self.close(shared, q, refused.close_code(), 0, protocol)
            .await;
    }
}

/// A SockJS client message over a WebSocket (a JSON array of strings) as the codec's message:
/// `None` for an empty array, the close code for what is not SockJS. Control frames pass.
fn sockjs_message(m: Message) -> Result<Option<Message>, CloseCode> {
    match m {
        Message::Text(t) => match sjs::unwrap(t.as_bytes()) {
            Ok(Some(s)) => Ok(Some(Message::Text(s.into()))),
            Ok(None) => Ok(None),
            Err(_) => Err(CloseCode::ProtocolError),
        },
        Message::Binary(_) => Err(CloseCode::ProtocolError),
        other => Ok(Some(other)),
    }
}

/// Frames on their way to the client, already in the transport's framing. A frame may span
/// several queued pieces (an MQTT `PUBLISH`: shared prefix, packet identifier, shared payload;
/// an SSE event: shared `data:` lines, then the connection's `id:` line).
#[derive(Default)]
pub(crate) struct WriteQueue {
    pub(crate) frames: VecDeque<Bytes>,
    /// Bytes of the frame being written that are still queued (0: the next byte queued starts a
    /// frame). A frame begun must be finished before anything else. 32 bits with the framing
    /// beside them keep the session in its allocation size class: no server frame comes near
    /// 4 GiB (messages are bounded far below).
    frame_left: u32,
    framing: Framing,
}

impl WriteQueue {
    /// An empty queue for a transport's framing.
    pub(crate) fn new(framing: Framing) -> Self {
        Self {
            framing,
            ..Default::default()
        }
    }

    /// The framing of what is queued.
    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// Queues a frame of the codec or the session (a WebSocket frame; empty ones are ignored),
    /// framed for the transport.
    pub(crate) fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        match self.framing {
            Framing::WebSocket => self.frames.push_back(b),
            Framing::EventStream => self.frames.push_back(sse::reframe(b)),
            f => {
                if let Some(f) = f.sockjs() {
                    let mut one = VecDeque::from([b]);
                    sjs::wrap_batch(&mut one, f);
                    self.frames.append(&mut one);
                }
            }
        }
    }

    /// Queues bytes already in the transport's framing (empty ones are ignored).
    pub(crate) fn push_framed(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.frames.push_back(b);
        }
    }

    /// Queues the control frames tungstenite wrote (pongs, close).
    pub(crate) fn take_ctl(&mut self, ctl: &mut Vec<u8>) {
        if !ctl.is_empty() {
            self.push_framed(Bytes::from(std::mem::take(ctl)));
        }
    }

    /// Bytes queued.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }

    /// Takes the rest of the frame begun (if any) off the front of the queue.
    fn take_begun(&mut self) -> VecDeque<Bytes> {
        let mut left = self.frame_left as usize;
        let mut begun = VecDeque::new();
        while left > 0 {
            let Some(mut piece) = self.frames.pop_front() else {
                break;
            };
            if piece.len() > left {
                self.frames.push_front(piece.split_off(left));
            }
            left -= piece.len();
            begun.push_back(piece);
        }
        begun
    }

    /// Drops every frame not yet started; the rest of a frame begun stays.
    pub(crate) fn discard_unsent(&mut self) {
        self.frames = self.take_begun();
    }

    /// Drops the rest of a frame begun (its stream failed: the next one starts with a whole
    /// frame).
    pub(crate) fn skip_begun(&mut self) {
        self.take_begun();
        self.frame_left = 0;
    }

    /// The whole length of the frame starting at `b`, the front piece just taken off the queue
    /// (what follows it is still queued).
    fn frame_len(&self, b: &[u8]) -> u32 {
        let len = match self.framing {
            // Every frame's header lies whole in the piece that starts it.
            Framing::WebSocket | Framing::SockJsWebSocket => {
                ws::frame_len(b).unwrap_or(b.len() as u64)
            }
            Framing::EventStream => {
                let next = if sse::continues(b) {
                    self.frames.front().map_or(0, Bytes::len)
                } else {
                    0
                };
                (b.len() + next) as u64
            }
            // A SockJS frame over HTTP is one piece.
            Framing::SockJsXhr | Framing::SockJsEventSource => b.len() as u64,
        };
        u32::try_from(len).unwrap_or(u32::MAX)
    }

    /// Follows frame boundaries over the first `n` bytes of `piece`, just written.
    fn wrote(&mut self, piece: &[u8], n: usize) {
        let mut at = 0;
        while at < n {
            if self.frame_left == 0 {
                self.frame_left = self.frame_len(&piece[at..]);
            }
            let take = (self.frame_left as usize).min(n - at);
            self.frame_left -= take as u32;
            at += take;
        }
    }

    /// Writes as much as the socket takes, all queued frames in one call.
    pub(crate) fn poll_write(
        &mut self,
        tcp: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
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
                let Some(front) = self.frames.pop_front() else {
                    break;
                };
                let n = written.min(front.len());
                self.wrote(&front, n);
                written -= n;
                if n < front.len() {
                    let mut rest = front;
                    rest.advance(n);
                    self.frames.push_front(rest);
                }
            }
        }
        // TLS records rustls could not hand to the socket yet.
        ready!(Pin::new(&mut *tcp).poll_flush(cx))?;
        // Idle connections hold no buffer: the next batch brings its own.
        self.frames = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self, tcp: &mut Stream) -> io::Result<()> {
        poll_fn(|cx| self.poll_write(tcp, cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(framing: Framing, pieces: &[&'static [u8]]) -> WriteQueue {
        let mut q = WriteQueue::new(framing);
        for p in pieces {
            q.frames.push_back(Bytes::from_static(p));
        }
        q
    }

    /// Simulates a write of `n` bytes.
    fn write(q: &mut WriteQueue, mut n: usize) {
        while n > 0 {
            let front = q.frames.pop_front().expect("queued");
            let k = n.min(front.len());
            q.wrote(&front, k);
            n -= k;
            if k < front.len() {
                let mut rest = front;
                rest.advance(k);
                q.frames.push_front(rest);
            }
        }
    }

    fn bytes(q: &WriteQueue) -> Vec<u8> {
        q.frames.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn a_frame_in_pieces_is_finished_before_a_close() {
        let ws = Framing::WebSocket;
        // One frame of 2 + 5 bytes in three pieces, then a whole frame.
        let mut w = q(ws, &[b"\x82\x05ab", b"cd", b"e", b"\x81\x01z"]);
        write(&mut w, 3);
        w.discard_unsent();
        assert_eq!(bytes(&w), b"bcde");
        // Nothing begun: everything goes.
        let mut w = q(ws, &[b"\x82\x05ab", b"cd", b"e", b"\x81\x01z"]);
        write(&mut w, 7);
        w.discard_unsent();
        assert!(w.frames.is_empty());
        let mut w = q(ws, &[b"\x82\x05ab", b"cd", b"e", b"\x81\x01z"]);
        w.discard_unsent();
        assert!(w.frames.is_empty());
    }

    #[test]
    fn several_frames_in_one_piece_and_long_headers() {
        // A pong and a close in one piece (as tungstenite writes them), then a 200-byte frame.
        let mut big = vec![0x82u8, 126, 0, 200];
        big.extend([7u8; 200]);
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        let ws = Framing::WebSocket;
        let mut w = q(ws, &[b"\x8a\x00\x88\x02\x03\xe8", big]);
        write(&mut w, 3);
        w.discard_unsent();
        assert_eq!(
            bytes(&w),
            b"\x02\x03\xe8",
            "the close frame begun is finished"
        );
        let mut w = q(ws, &[b"\x8a\x00\x88\x02\x03\xe8", big]);
        write(&mut w, 6 + 100);
        w.discard_unsent();
        assert_eq!(bytes(&w).len(), 104);
        assert_eq!(ws::frame_len(big), Some(204));
    }

    #[test]
    fn an_event_and_its_id_line_are_one_frame() {
        let sse = Framing::EventStream;
        let pieces: [&'static [u8]; 4] = [
            b"data: {\"a\":1}\n",
            b"id: h1.b:1:1\n\n",
            b":\n\n",
            b"data: {}\n\n",
        ];
        // The shared data lines written: their id line must follow, nothing after it.
        let mut w = q(sse, &pieces);
        write(&mut w, pieces[0].len());
        w.discard_unsent();
        assert_eq!(bytes(&w), pieces[1]);
        // In the middle of the id line.
        let mut w = q(sse, &pieces);
        write(&mut w, pieces[0].len() + 3);
        w.discard_unsent();
        assert_eq!(bytes(&w), &pieces[1][3..]);
        // At a boundary: nothing is kept.
        let mut w = q(sse, &pieces);
        write(&mut w, pieces[0].len() + pieces[1].len());
        w.discard_unsent();
        assert!(w.frames.is_empty());
        // Inside a whole event.
        let mut w = q(sse, &pieces);
        write(&mut w, pieces[0].len() + pieces[1].len() + 1);
        w.discard_unsent();
        assert_eq!(bytes(&w), b"\n\n");
    }

    #[test]
    fn sockjs_frames_over_http_are_one_piece_each() {
        // `a["..."]` would read as a WebSocket header: over HTTP a piece is a whole frame.
        let xhr = Framing::SockJsXhr;
        let pieces: [&'static [u8]; 2] = [b"a[\"MESSAGE\\n\"]\n", b"h\n"];
        let mut w = q(xhr, &pieces);
        write(&mut w, 3);
        w.discard_unsent();
        assert_eq!(bytes(&w), &pieces[0][3..]);
        let mut w = q(xhr, &pieces);
        write(&mut w, pieces[0].len());
        w.discard_unsent();
        assert!(w.frames.is_empty());
        // A response that failed within a frame: the next one starts at the next frame.
        let mut w = q(xhr, &pieces);
        write(&mut w, 3);
        w.skip_begun();
        assert_eq!(bytes(&w), pieces[1]);
        write(&mut w, 1);
        w.discard_unsent();
        assert_eq!(
            bytes(&w),
            b"\n",
            "the next frame is followed from its start"
        );
    }

    #[test]
    fn the_codecs_frames_are_framed_for_the_transport() {
        let text = crate::frame::text_frame(r#"{"type":"pong","id":1}"#);
        let mut w = WriteQueue::new(Framing::EventStream);
        w.push(text.clone());
        w.push(crate::frame::ping_frame());
        assert_eq!(bytes(&w), b"data: {\"type\":\"pong\",\"id\":1}\n\n:\n\n");
        let mut w = WriteQueue::new(Framing::SockJsXhr);
        w.push(text.clone());
        assert_eq!(
            bytes(&w),
            b"a[\"{\\\"type\\\":\\\"pong\\\",\\\"id\\\":1}\"]\n"
        );
        let mut w = WriteQueue::new(Framing::WebSocket);
        w.push(text.clone());
        assert_eq!(bytes(&w), &text[..]);
    }
}
