//! SockJS sessions over HTTP requests (`xhr_streaming`, `eventsource`, `xhr` polling, with
//! `xhr_send` for the client's messages).
//!
//! A session outlives its requests. The first receiving request creates it in the edge's
//! [`Table`] and its task carries on as the session's task, holding an [`HttpLink`]: the
//! session's one link to the client, through which the session layer reads client messages
//! and writes frames, exactly as it does over a WebSocket. Later receiving requests are handed
//! to the session's task through its [`Slot`]; `xhr_send` bodies are queued there (bounded).
//! A session with no receiving request for `edge.sockjs_disconnect_delay_ms` is over, as is one
//! whose client closed its stream and did not come back within that delay.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use herald_core::ids::ProjectId;
use http::StatusCode;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep, sleep, timeout_at};

use super::frame;
use super::{Endpoint, Request, Transport, head, info_json};
use crate::listener::Stream;
use crate::transport::{Framing, WriteQueue};

/// Most `xhr_send` bodies queued for a session before further ones are refused (503).
const MAX_INBOX: usize = 16;

/// The prelude of an `xhr_streaming` response: browsers hand a streaming XHR's text to the
/// page only once some bytes came.
const XHR_PRELUDE: [u8; 2049] = {
    let mut p = [b'h'; 2049];
    p[2048] = b'\n';
    p
};

/// The edge's SockJS sessions over HTTP, by project and session id.
#[derive(Default)]
pub(crate) struct Table {
    sessions: Mutex<HashMap<Box<str>, Arc<Slot>>>,
}

fn key(project: &ProjectId, session: &str) -> Box<str> {
    format!("{project}/{session}").into_boxed_str()
}

/// Where requests meet a session's task: queued client messages and a receiving request to
/// take over.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    inbox: VecDeque<String>,
    attach: Option<Receiver>,
    waker: Option<Waker>,
    ended: bool,
}

/// A receiving request handed to a session.
pub(crate) struct Receiver {
    stream: Stream,
    origin: Option<String>,
}

impl Slot {
    fn wake(s: &mut SlotState) {
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// A response under way.
struct Active {
    stream: Stream,
    origin: Option<Box<str>>,
    /// Bytes on their way (the head, a prelude, a frame).
    writing: Bytes,
    /// Body bytes sent on this response.
    sent: usize,
    /// Polling: the head is not written yet (it carries the length of the body).
    head_pending: bool,
    /// End the response once `writing` is written.
    finish: bool,
}

/// What the client side of a session did.
pub(crate) enum LinkEvent {
    /// A client message (the strings of one `xhr_send`, joined).
    Message(String),
    /// No receiving request came within the disconnect delay: the client is gone.
    Gone,
}

/// A session's link to its client over HTTP requests.
pub(crate) struct HttpLink {
    slot: Arc<Slot>,
    table: Arc<Table>,
    key: Box<str>,
    transport: Transport,
    active: Option<Active>,
    /// While no request receives: when the session is over.
    gone_at: Option<Pin<Box<Sleep>>>,
    disconnect_delay_ms: u32,
    response_limit: u32,
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        let mut sessions = self.table.sessions.lock();
        if sessions
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            sessions.remove(&self.key);
        }
        drop(sessions);
        let mut s = self.slot.state.lock();
        s.ended = true;
        s.inbox.clear();
        s.attach = None;
        metrics::gauge!("herald_edge_sockjs_sessions", "transport" => self.transport.label())
            .decrement(1.0);
    }
}

impl HttpLink {
    /// The transport.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// Starts `r` as the response under way.
    fn activate(&mut self, r: Receiver) {
        let mut a = Active {
            stream: r.stream,
            origin: r.origin.map(String::into_boxed_str),
            writing: Bytes::new(),
            sent: 0,
            head_pending: false,
            finish: false,
        };
        match self.transport {
            Transport::XhrStreaming => {
                let mut b = BytesMut::from(
                    head(
                        StatusCode::OK,
                        a.origin.as_deref(),
                        "content-type: application/javascript; charset=UTF-8\r\n",
                    )
                    .as_bytes(),
                );
                b.extend_from_slice(&XHR_PRELUDE);
                a.writing = b.freeze();
            }
            Transport::EventSource => {
                let mut b = BytesMut::from(
                    head(
                        StatusCode::OK,
                        a.origin.as_deref(),
                        "content-type: text/event-stream\r\n",
                    )
                    .as_bytes(),
                );
                b.extend_from_slice(b"\r\n");
                a.writing = b.freeze();
            }
            Transport::XhrPolling | Transport::WebSocket => a.head_pending = true,
        }
        self.active = Some(a);
        self.gone_at = None;
    }

    /// Writes what `q` holds down the response under way; ready once nothing is left to write
    /// (sent, or dropped with a response that failed).
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, q: &mut WriteQueue) -> Poll<()> {
        loop {
            let Some(a) = &mut self.active else {
                return if q.frames.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            };
            if a.writing.is_empty() {
                if a.finish {
                    // Ended: the client makes its next request.
                    let _ = Pin::new(&mut a.stream).poll_shutdown(cx);
                    self.detach();
                    continue;
                }
                if a.head_pending {
                    if q.frames.is_empty() {
                        return Poll::Ready(());
                    }
                    let body: usize = q.frames.iter().map(Bytes::len).sum();
                    let h = head(
                        StatusCode::OK,
                        a.origin.as_deref(),
                        &format!(
                            "content-type: application/javascript; charset=UTF-8\r\ncontent-length: {body}\r\n"
                        ),
                    );
                    let mut b = BytesMut::with_capacity(h.len() + body);
                    b.extend_from_slice(h.as_bytes());
                    for f in q.frames.drain(..) {
                        b.extend_from_slice(&f);
                    }
                    a.writing = b.freeze();
                    a.head_pending = false;
                    a.finish = true;
                } else if !q.frames.is_empty() {
                    // Every queued frame in one vectored write.
                    let before = q.queued_bytes();
                    let wrote = q.poll_write(&mut a.stream, cx);
                    a.sent += before - q.queued_bytes();
                    let failed = match wrote {
                        Poll::Ready(Ok(())) => false,
                        Poll::Ready(Err(_)) => true,
                        Poll::Pending if ready_eof(a, cx).is_ok() => return Poll::Pending,
                        Poll::Pending => true,
                    };
                    if failed {
                        // The response is gone: the rest of a frame begun on it goes too.
                        q.skip_begun();
                        self.detach();
                    }
                    continue;
                } else {
                    if a.sent >= self.response_limit as usize {
                        // Long enough: the client frees this response and opens another.
                        a.finish = true;
                        continue;
                    }
                    if let Err(()) = ready_eof(a, cx) {
                        self.detach();
                        continue;
                    }
                    return Poll::Ready(());
                }
            }
            match Pin::new(&mut a.stream).poll_write(cx, &a.writing) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    a.writing.advance(n);
                    if a.writing.is_empty() {
                        // An emptied `Bytes` still holds its buffer (the head and the 2 KiB
                        // prelude): an idle session keeps none.
                        a.writing = Bytes::new();
                    }
                }
                Poll::Ready(_) => self.detach(),
                Poll::Pending => {
                    if ready_eof(a, cx).is_err() {
                        self.detach();
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// The response under way is over (ended, failed, or closed by the client).
    fn detach(&mut self) {
        self.active = None;
    }

    /// Takes a receiving request handed over, and the next client message; `Gone` once no
    /// request received for the disconnect delay.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        let (attach, message) = {
            let mut s = self.slot.state.lock();
            let attach = s.attach.take();
            let message = s.inbox.pop_front();
            if attach.is_none() && message.is_none() {
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
            }
            (attach, message)
        };
        let attached = attach.is_some();
        if let Some(r) = attach {
            if self.active.is_some() {
                // SockJS: one receiving request at a time; the newcomer is told and closed.
                tokio::spawn(refuse_receiver(
                    r,
                    self.transport,
                    2010,
                    "Another connection still open",
                ));
            } else {
                self.activate(r);
            }
        }
        if let Some(m) = message {
            return Poll::Ready(Some(LinkEvent::Message(m)));
        }
        if attached {
            // The caller writes to it first.
            return Poll::Ready(None);
        }
        if self.active.is_none() {
            let delay = Duration::from_millis(u64::from(self.disconnect_delay_ms));
            let gone = self.gone_at.get_or_insert_with(|| Box::pin(sleep(delay)));
            if gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(LinkEvent::Gone));
            }
        }
        Poll::Pending
    }

    /// The next client message, writing `q` meanwhile; `None` when the client is gone.
    pub(crate) async fn next_message(&mut self, q: &mut WriteQueue) -> Option<String> {
        poll_fn(|cx| {
            loop {
                let _ = self.poll_write(cx, q);
                match self.poll_read(cx) {
                    Poll::Ready(Some(LinkEvent::Message(m))) => return Poll::Ready(Some(m)),
                    Poll::Ready(Some(LinkEvent::Gone)) => return Poll::Ready(None),
                    Poll::Ready(None) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// Sends `q` and the close frame within `deadline` (waiting for a receiving request if none
    /// is there), then ends the response.
    pub(crate) async fn close(
        &mut self,
        q: &mut WriteQueue,
        code: u16,
        reason: &str,
        deadline: Instant,
    ) -> bool {
        q.push_framed(frame::framed(
            self.transport.framing(),
            &frame::close(code, reason),
        ));
        let sent = timeout_at(
            deadline,
            poll_fn(|cx| {
                loop {
                    if self.poll_write(cx, q).is_ready() && self.active.is_some() {
                        return Poll::Ready(());
                    }
                    match self.poll_read(cx) {
                        // The client's messages after the close are dropped.
                        Poll::Ready(Some(LinkEvent::Message(_)) | None) => continue,
                        Poll::Ready(Some(LinkEvent::Gone)) | Poll::Pending => {
                            if self.active.is_none() && q.frames.is_empty() {
                                return Poll::Ready(());
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }),
        )
        .await
        .is_ok();
        if let Some(mut a) = self.active.take() {
            let _ = timeout_at(deadline, a.stream.write_all(&a.writing)).await;
            let _ = timeout_at(deadline, a.stream.shutdown()).await;
        }
        sent && q.frames.is_empty()
    }
}

/// Notices a client that closed its response: `Err` on EOF or error (bytes it sends are read
/// and dropped).
fn ready_eof(a: &mut Active, cx: &mut Context<'_>) -> Result<(), ()> {
    let mut buf = [0u8; 64];
    loop {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut a.stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Err(()),
            Poll::Ready(Ok(())) => continue,
            Poll::Ready(Err(_)) => return Err(()),
            Poll::Pending => return Ok(()),
        }
    }
}

/// Answers a receiving request that cannot have the session with a close frame.
async fn refuse_receiver(r: Receiver, transport: Transport, code: u16, reason: &'static str) {
    let mut stream = r.stream;
    let framing = transport.framing();
    let f = frame::framed(framing, &frame::close(code, reason));
    let mut body = Vec::new();
    let ctype = match transport {
        Transport::EventSource => {
            body.extend_from_slice(b"\r\n");
            "text/event-stream"
        }
        Transport::XhrStreaming => {
            body.extend_from_slice(&XHR_PRELUDE);
            "application/javascript; charset=UTF-8"
        }
        _ => "application/javascript; charset=UTF-8",
    };
    body.extend_from_slice(&f);
    let h = head(
        StatusCode::OK,
        r.origin.as_deref(),
        &format!(
            "content-type: {ctype}\r\ncontent-length: {}\r\n",
            body.len()
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let _ = timeout_at(deadline, async {
        stream.write_all(h.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

/// Settings a request needs.
pub(crate) struct Settings {
    pub(crate) max_message_bytes: usize,
    pub(crate) disconnect_delay_ms: u32,
    pub(crate) response_limit: u32,
    pub(crate) deadline: Instant,
}

/// What became of a request.
pub(crate) enum Served {
    /// Answered (or handed to its session): the request's task ends.
    Done,
    /// It opened a new session: the task carries on as the session's, over this link (its
    /// queue holds the open frame).
    Session(Box<HttpLink>, WriteQueue),
}

/// Answers a SockJS request other than `websocket` for `project` (known to the edge).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    table: &Arc<Table>,
    stream: &mut Option<Stream>,
    project: &ProjectId,
    req: &Request,
    origin: Option<&str>,
    mut leftover: Vec<u8>,
    set: &Settings,
) -> Served {
    let Some(tcp) = stream.as_mut() else {
        return Served::Done;
    };
    let count = |endpoint: &'static str, status: StatusCode| {
        metrics::counter!("herald_edge_sockjs_requests_total", "endpoint" => endpoint, "status" => status.as_str().to_owned())
            .increment(1);
    };
    if req.method == http::Method::OPTIONS {
        let methods = match req.endpoint {
            Endpoint::Info | Endpoint::Greeting => "OPTIONS, GET",
            _ => "OPTIONS, POST",
        };
        let mut extra = format!(
            "access-control-allow-methods: {methods}\r\naccess-control-max-age: 31536000\r\ncontent-length: 0\r\n"
        );
        if let Some(h) = &req.cors_headers {
            extra.push_str(&format!("access-control-allow-headers: {h}\r\n"));
        }
        answer(tcp, StatusCode::NO_CONTENT, origin, &extra, b"").await;
        count("options", StatusCode::NO_CONTENT);
        return Served::Done;
    }
    match &req.endpoint {
        Endpoint::Greeting => {
            let body = b"Welcome to SockJS!\n";
            let extra = format!(
                "content-type: text/plain; charset=UTF-8\r\ncontent-length: {}\r\n",
                body.len()
            );
            answer(tcp, StatusCode::OK, origin, &extra, body).await;
            count("greeting", StatusCode::OK);
            Served::Done
        }
        Endpoint::Info => {
            let body = info_json();
            let extra = format!(
                "content-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\n",
                body.len()
            );
            answer(tcp, StatusCode::OK, origin, &extra, body.as_bytes()).await;
            count("info", StatusCode::OK);
            Served::Done
        }
        Endpoint::Send { session } => {
            let status = send(table, tcp, project, session, req, &mut leftover, set).await;
            let (status, body): (StatusCode, &[u8]) = match status {
                Ok(()) => (StatusCode::NO_CONTENT, b""),
                Err(e) => e,
            };
            let extra = format!(
                "content-type: text/plain; charset=UTF-8\r\ncontent-length: {}\r\n",
                body.len()
            );
            answer(tcp, status, origin, &extra, body).await;
            count("xhr_send", status);
            Served::Done
        }
        Endpoint::Receive { session, transport } => {
            let k = key(project, session);
            let receiver = |stream| Receiver {
                stream,
                origin: origin.map(str::to_string),
            };
            let existing = table.sessions.lock().get(&k).cloned();
            if let Some(slot) = existing {
                let Some(tcp) = stream.take() else {
                    return Served::Done;
                };
                let mut s = slot.state.lock();
                let r = receiver(tcp);
                if s.ended || s.attach.is_some() {
                    drop(s);
                    tokio::spawn(refuse_receiver(
                        r,
                        *transport,
                        2010,
                        "Another connection still open",
                    ));
                } else {
                    s.attach = Some(r);
                    Slot::wake(&mut s);
                }
                count(transport.label(), StatusCode::OK);
                return Served::Done;
            }
            let slot = Arc::new(Slot::default());
            let created = {
                let mut sessions = table.sessions.lock();
                if sessions.contains_key(&k) {
                    false
                } else {
                    sessions.insert(k.clone(), slot.clone());
                    true
                }
            };
            if !created {
                // Created by a request of the same session a moment ago.
                answer(
                    tcp,
                    StatusCode::CONFLICT,
                    origin,
                    "content-length: 0\r\n",
                    b"",
                )
                .await;
                return Served::Done;
            }
            metrics::gauge!("herald_edge_sockjs_sessions", "transport" => transport.label())
                .increment(1.0);
            count(transport.label(), StatusCode::OK);
            let Some(tcp) = stream.take() else {
                return Served::Done;
            };
            let mut link = Box::new(HttpLink {
                slot,
                table: table.clone(),
                key: k,
                transport: *transport,
                active: None,
                gone_at: None,
                disconnect_delay_ms: set.disconnect_delay_ms,
                response_limit: set.response_limit,
            });
            link.activate(receiver(tcp));
            let mut q = WriteQueue::new(Framing::of_sockjs(*transport));
            q.push_framed(frame::framed(transport.framing(), frame::OPEN));
            Served::Session(link, q)
        }
    }
}

/// Reads an `xhr_send` body and queues it for its session.
async fn send(
    table: &Table,
    tcp: &mut Stream,
    project: &ProjectId,
    session: &str,
    req: &Request,
    body: &mut Vec<u8>,
    set: &Settings,
) -> Result<(), (StatusCode, &'static [u8])> {
    let Some(slot) = table.sessions.lock().get(&key(project, session)).cloned() else {
        return Err((StatusCode::NOT_FOUND, b""));
    };
    // A body holds at most a message of the largest size, JSON-escaped (6 bytes per byte at
    // worst), in an array.
    let max = set.max_message_bytes.saturating_mul(6).saturating_add(64);
    let too_large = Err((StatusCode::PAYLOAD_TOO_LARGE, &b"Payload too large.\n"[..]));
    let bad = Err((StatusCode::BAD_REQUEST, &b""[..]));
    if req.chunked {
        let mut raw = std::mem::take(body);
        loop {
            match dechunk(&raw, max) {
                Dechunked::Done(b) => {
                    *body = b;
                    break;
                }
                Dechunked::TooLarge => return too_large,
                Dechunked::Bad => return bad,
                Dechunked::More => {}
            }
            if raw.len() > max + 4096 {
                return too_large;
            }
            let mut chunk = [0u8; 4096];
            match timeout_at(set.deadline, tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&chunk[..n]),
                _ => return bad,
            }
        }
    } else {
        if req.content_length > max {
            return too_large;
        }
        body.truncate(req.content_length);
        while body.len() < req.content_length {
            let mut chunk = vec![0u8; (req.content_length - body.len()).min(16 * 1024)];
            match timeout_at(set.deadline, tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                _ => return bad,
            }
        }
    }
    let message = match frame::unwrap(body) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(frame::PayloadError::Empty) => {
            return Err((StatusCode::INTERNAL_SERVER_ERROR, b"Payload expected.\n"));
        }
        Err(frame::PayloadError::Broken) => {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                b"Broken JSON encoding.\n",
            ));
        }
    };
    let mut s = slot.state.lock();
    if s.ended {
        return Err((StatusCode::NOT_FOUND, b""));
    }
    if s.inbox.len() >= MAX_INBOX {
        metrics::counter!("herald_edge_sockjs_send_refused_total").increment(1);
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            b"Too many messages queued.\n",
        ));
    }
    s.inbox.push_back(message);
    Slot::wake(&mut s);
    Ok(())
}

/// A chunked body read so far.
#[derive(Debug, PartialEq, Eq)]
enum Dechunked {
    /// The whole body.
    Done(Vec<u8>),
    /// More bytes are needed.
    More,
    /// Over the bound.
    TooLarge,
    /// Not chunked encoding.
    Bad,
}

/// Decodes a chunked body (`Transfer-Encoding: chunked`, extensions and trailers ignored) of at
/// most `max` bytes from `raw`.
fn dechunk(raw: &[u8], max: usize) -> Dechunked {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
            return Dechunked::More;
        };
        let line = &raw[at..at + eol];
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            return Dechunked::Bad;
        };
        at += eol + 2;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            return match raw[at..].windows(2).position(|w| w == b"\r\n") {
                Some(0) => Dechunked::Done(body),
                Some(_) => match raw[at..].windows(4).position(|w| w == b"\r\n\r\n") {
                    Some(_) => Dechunked::Done(body),
                    None => Dechunked::More,
                },
                None => Dechunked::More,
            };
        }
        if body.len() + size > max {
            return Dechunked::TooLarge;
        }
        if raw.len() < at + size + 2 {
            return Dechunked::More;
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// Writes a whole answer and ends the connection.
async fn answer(
    tcp: &mut Stream,
    status: StatusCode,
    origin: Option<&str>,
    extra: &str,
    body: &[u8],
) {
    let mut b = head(status, origin, extra).into_bytes();
    b.extend_from_slice(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    let _ = timeout_at(deadline, async {
        tcp.write_all(&b).await?;
        tcp.shutdown().await?;
        // Let the client read the answer before the socket goes (no reset on unread bytes).
        let mut sink = [0u8; 256];
        while tcp.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_is_two_kib_of_h_and_a_newline() {
        assert_eq!(XHR_PRELUDE.len(), 2049);
        assert!(XHR_PRELUDE[..2048].iter().all(|&b| b == b'h'));
        assert_eq!(XHR_PRELUDE[2048], b'\n');
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\n[\"a\r\n2\r\n\"]\r\n0\r\n\r\n", 100),
            Dechunked::Done(b"[\"a\"]".to_vec())
        );
        assert_eq!(dechunk(b"3\r\n[\"a\r\n", 100), Dechunked::More);
        assert_eq!(dechunk(b"3\r\n[\"a\r\n0\r\n", 100), Dechunked::More);
        assert_eq!(dechunk(b"zz\r\n", 100), Dechunked::Bad);
        assert_eq!(dechunk(b"ff\r\n", 100), Dechunked::TooLarge);
    }

    #[test]
    fn the_link_stays_small() {
        let size = std::mem::size_of::<HttpLink>();
        assert!(size <= 256, "HttpLink grew to {size} bytes");
    }
}
