//! The WebSocket transport ([`crate::transport`]) every codec shares: tungstenite's
//! [`WebSocketContext`] parses client frames (and answers pings and closes) over a synchronous,
//! non-blocking view of the stream, and the connection writes pre-framed bytes itself, every
//! queued frame in one vectored write ([`crate::transport::WriteQueue`]).

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use herald_core::codes::CloseCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, WebSocketContext,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::deflate::{Inflate, InflateError};
use crate::listener::Stream;
use crate::transport::{Inbound, WriteQueue};

/// A live WebSocket: the stream, and tungstenite's reader while the client's frames are read.
pub(crate) struct WsLink {
    pub(crate) tcp: Stream,
    /// tungstenite's reader, only while it holds something or the client's bytes are coming: an
    /// idle connection holds none ([`Reader`]).
    reader: Option<Box<Reader>>,
    /// Where the client negotiated `permessage-deflate`: its compressed messages' inflater.
    pub(crate) inflate: Option<Box<Inflate>>,
}

/// tungstenite's reader of one connection and what it wrote. It is made when the client's bytes
/// arrive and dropped once it holds nothing ([`FrameTrack`]): with its context (~250 bytes) and
/// its read buffer (`edge.read_buffer_bytes`, grown by any frame longer than about half of it),
/// it would be the largest part of an idle connection's state.
pub(crate) struct Reader {
    pub(crate) ctx: WebSocketContext,
    /// Where tungstenite holds nothing (then the reader may go).
    pub(crate) track: FrameTrack,
    /// Control frames tungstenite wrote (pongs, the close answer), to be queued.
    pub(crate) ctl: Vec<u8>,
}

impl Reader {
    /// A reader that holds nothing.
    pub(crate) fn new(config: WebSocketConfig) -> Box<Self> {
        Self::with_read(Vec::new(), config)
    }

    /// A reader holding `read`, bytes of the client's first frames read with its request.
    pub(crate) fn with_read(read: Vec<u8>, config: WebSocketConfig) -> Box<Self> {
        let mut track = FrameTrack::default();
        track.handed(&read);
        Box::new(Self {
            ctx: WebSocketContext::from_partially_read(read, Role::Server, Some(config)),
            track,
            ctl: Vec::new(),
        })
    }
}

impl WsLink {
    /// A WebSocket over `tcp` whose reader is `reader` (`None`: made when bytes arrive).
    pub(crate) fn new(
        tcp: Stream,
        reader: Option<Box<Reader>>,
        inflate: Option<Box<Inflate>>,
    ) -> Self {
        Self {
            tcp,
            reader,
            inflate,
        }
    }

    /// The stream, the reader (made now if the connection had none) and the inflater.
    pub(crate) fn parts(
        &mut self,
        config: &WebSocketConfig,
    ) -> (&mut Stream, &mut Reader, Option<&mut Inflate>) {
        let reader = self.reader.get_or_insert_with(|| Reader::new(*config));
        (&mut self.tcp, reader, self.inflate.as_deref_mut())
    }

    /// Moves the control frames tungstenite wrote (pongs, close answers) to `q`.
    pub(crate) fn take_ctl(&mut self, q: &mut WriteQueue) {
        if let Some(r) = &mut self.reader {
            q.take_ctl(&mut r.ctl);
        }
    }

    /// Reads the next client message.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        config: &WebSocketConfig,
    ) -> Poll<Inbound> {
        if self.reader.is_none() {
            // Nothing is held: a reader is made once the client's bytes are there.
            let ready = self.inflate.as_ref().is_some_and(|f| f.has_output());
            if !ready && let Err(_) = ready!(self.tcp.poll_read_ready(cx)) {
                return Poll::Ready(Inbound::Failed(None));
            }
        }
        let reader = self.reader.get_or_insert_with(|| Reader::new(*config));
        let read = reader.ctx.read(&mut Io {
            stream: &mut self.tcp,
            cx,
            out: &mut reader.ctl,
            track: Some(&mut reader.track),
            inflate: self.inflate.as_deref_mut(),
        });
        match read {
            Ok(m) => Poll::Ready(Inbound::Message(m)),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                // The stream registered the waker; control frames to write first, if any.
                if !reader.ctl.is_empty() {
                    return Poll::Ready(Inbound::Again);
                }
                // tungstenite holds nothing now: the reader (and any buffer a large frame
                // grew) goes until the client sends again.
                if reader.track.at_rest() && reader.ctx.can_write() {
                    self.reader = None;
                }
                Poll::Pending
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Inbound::Closed),
            Err(e) => Poll::Ready(Inbound::Failed(read_error_code(&e))),
        }
    }
}

/// Gives tungstenite a synchronous, non-blocking view of the stream: reads come from the stream
/// (`WouldBlock` when it has nothing, with the task's waker registered), writes (pongs, close
/// frames) are collected for the connection's own writer.
pub(crate) struct Io<'a, 'b> {
    pub(crate) stream: &'a mut Stream,
    pub(crate) cx: &'a mut Context<'b>,
    pub(crate) out: &'a mut Vec<u8>,
    /// Follows what tungstenite is given, where the context may be replaced ([`FrameTrack`]).
    pub(crate) track: Option<&'a mut FrameTrack>,
    /// Where the connection negotiated `permessage-deflate`: its compressed messages, inflated
    /// before tungstenite reads them ([`crate::deflate`]).
    pub(crate) inflate: Option<&'a mut Inflate>,
}

impl Io<'_, '_> {
    /// Reads what the stream has into `buf`; `WouldBlock` (the waker registered) when nothing.
    fn read_stream(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.stream).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inflate.take() {
            None => self.read_stream(buf)?,
            Some(f) => {
                let r = loop {
                    if f.has_output() {
                        break Ok(f.take_output(buf));
                    }
                    match self.read_stream(buf) {
                        // The end of the stream, or bytes for tungstenite now.
                        Ok(0) => break Ok(0),
                        Ok(n) => match f.filter(&mut buf[..n]) {
                            // All taken aside: read on (or hand over what came of them).
                            Ok(0) => continue,
                            r => break r,
                        },
                        Err(e) => break Err(e),
                    }
                };
                self.inflate = Some(f);
                r?
            }
        };
        if let Some(t) = &mut self.track {
            t.handed(&buf[..n]);
        }
        Ok(n)
    }
}

/// Follows the client's frames through the bytes handed to tungstenite, so that a connection can
/// drop its [`Reader`] whenever tungstenite holds nothing.
///
/// tungstenite asks for bytes only when it has no whole frame: when it asks and none are there
/// ([`io::ErrorKind::WouldBlock`]) while the bytes handed over end at the end of a frame that is
/// not part of a fragmented message, it holds nothing ([`FrameTrack::at_rest`]), and a fresh
/// context would read what comes next the same way. (tungstenite's read buffer also never
/// shrinks: any frame of more than about half of it, a `CONNECT` carrying its token, a STOMP
/// `SUBSCRIBE`, a native `refresh`, doubles it; dropping the reader drops that too.)
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameTrack {
    /// Payload bytes of the current frame still to come (saturating: tungstenite refuses frames
    /// anywhere near 4 GiB before their payload).
    left: u32,
    /// Header bytes of the current frame seen so far.
    seen: u8,
    /// The current header's length once its second byte is seen ([`HEAD_LEN`]), and
    /// [`FRAGMENTED`].
    head: u8,
}

/// The header length bits of [`FrameTrack::head`].
const HEAD_LEN: u8 = 0x0f;
/// A data frame without FIN came, and the final one has not.
const FRAGMENTED: u8 = 0x80;

impl FrameTrack {
    /// Follows bytes handed to tungstenite.
    pub(crate) fn handed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.seen == 0 && self.left > 0 {
                let n = b.len().min(self.left as usize);
                self.left -= n as u32;
                b = &b[n..];
                continue;
            }
            let byte = b[0];
            b = &b[1..];
            match self.seen {
                0 => {
                    // FIN and opcode: data frames (opcodes below 8) open or close a message.
                    if byte & 0x08 == 0 {
                        if byte & 0x80 == 0 {
                            self.head |= FRAGMENTED;
                        } else {
                            self.head &= !FRAGMENTED;
                        }
                    }
                }
                1 => {
                    let mask = if byte & 0x80 != 0 { 4 } else { 0 };
                    let (ext, len) = match byte & 0x7f {
                        126 => (2, 0),
                        127 => (8, 0),
                        n => (0, u32::from(n)),
                    };
                    self.head = (self.head & FRAGMENTED) | (2 + ext + mask);
                    self.left = len;
                }
                n => {
                    // A header is 2 bytes, the extended length (0, 2 or 8) and the mask (0 or 4):
                    // 2 and 6 have no extended length, 4 and 8 two bytes, 10 and 14 eight.
                    let ext_end = match self.head & HEAD_LEN {
                        4 | 8 => 4,
                        10 | 14 => 10,
                        _ => 2,
                    };
                    if n < ext_end {
                        self.left = if self.left > u32::MAX >> 8 {
                            u32::MAX
                        } else {
                            self.left << 8 | u32::from(byte)
                        };
                    }
                }
            }
            self.seen += 1;
            if self.seen >= 2 && self.seen == self.head & HEAD_LEN {
                self.seen = 0;
            }
        }
    }

    /// Whether tungstenite holds nothing, now that it asked for bytes and none were there: the
    /// bytes handed over end at a frame's end and no message is half read.
    pub(crate) fn at_rest(&self) -> bool {
        self.seen == 0 && self.left == 0 && self.head & FRAGMENTED == 0
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

/// The whole length of the WebSocket frame starting at `b`, from its header; `None` when `b`
/// does not hold the whole header.
pub(crate) fn frame_len(b: &[u8]) -> Option<u64> {
    let second = *b.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (header, len) = match second & 0x7f {
        126 => (4, u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
        127 => (10, u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    Some(header + mask + len)
}

/// The close frame of `code`.
fn ws_close(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: code.reason().into(),
    }
}

/// Reads a message; `WouldBlock` only when control frames wait to be written. `track` follows
/// the bytes read where the context may later be replaced.
pub(crate) async fn read_message(
    stream: &mut Stream,
    ctx: &mut WebSocketContext,
    ctl: &mut Vec<u8>,
    mut track: Option<&mut FrameTrack>,
    mut inflate: Option<&mut Inflate>,
) -> Result<Message, WsError> {
    poll_fn(|cx| {
        match ctx.read(&mut Io {
            stream,
            cx,
            out: ctl,
            track: track.as_deref_mut(),
            inflate: inflate.as_deref_mut(),
        }) {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock && ctl.is_empty() => {
                Poll::Pending
            }
            r => Poll::Ready(r),
        }
    })
    .await
}

/// Reads the first data message (text or binary), answering pings on the way.
pub(crate) async fn read_first(
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
    track: &mut FrameTrack,
    mut inflate: Option<&mut Inflate>,
) -> Result<Message, WsError> {
    let mut ctl = Vec::new();
    loop {
        let read = read_message(
            tcp,
            ctx,
            &mut ctl,
            Some(&mut *track),
            inflate.as_deref_mut(),
        )
        .await;
        if !ctl.is_empty() {
            tcp.write_all(&std::mem::take(&mut ctl))
                .await
                .map_err(WsError::Io)?;
        }
        match read {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// The close code answering a read error, `None` when the peer is simply gone (reset, EOF).
pub(crate) fn read_error_code(e: &WsError) -> Option<CloseCode> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        // A compressed message refused ([`crate::deflate`]).
        WsError::Io(e) if InflateError::of(e).is_some() => {
            InflateError::of(e).map(InflateError::close_code)
        }
        WsError::Capacity(_) => Some(CloseCode::MessageTooBig),
        // A peer that drops TCP without a close frame is gone, not misbehaving.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) | WsError::Utf8(_) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

/// How a server close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseOutcome {
    /// The close frame left (the peer may or may not have answered).
    Sent,
    /// The socket took nothing within the close timeout: the close frame (and whatever was queued
    /// before it) never left, and the connection was dropped. The client sees the TCP connection
    /// end without a close frame (a browser reports 1006).
    Unsent,
}

/// Sends what `q` holds, then the close frame of `code`, waits for the peer's answer within the
/// close timeout, and shuts the socket. Counts the close under `herald_edge_closes_total`: by its
/// code's label, or `<label>_unsent` when the close frame could not be written in time, and by
/// the `protocol` the connection spoke.
pub(crate) async fn close_and_finish(
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
    mut inflate: Option<&mut Inflate>,
    q: &mut WriteQueue,
    code: CloseCode,
    close_timeout: Duration,
    protocol: &'static str,
) -> CloseOutcome {
    let mut ctl = Vec::new();
    {
        // Closing only writes (into `ctl`): no waker is needed.
        let mut noop = Context::from_waker(std::task::Waker::noop());
        let _ = ctx.close(
            &mut Io {
                stream: tcp,
                cx: &mut noop,
                out: &mut ctl,
                track: None,
                inflate: None,
            },
            Some(ws_close(code)),
        );
    }
    q.take_ctl(&mut ctl);
    let mut sent = false;
    let finished = timeout(close_timeout, async {
        let flushed = q.flush(tcp).await;
        sent = true;
        // Counted once the close frame left (or the peer was found gone), not after its answer.
        count_close(code, CloseOutcome::Sent, protocol);
        flushed?;
        // Wait for the peer's close (or EOF) so our close frame is not lost to a reset.
        if code == CloseCode::MessageTooBig {
            // The reader cannot go on after an oversized frame: discard the peer's bytes.
            let mut sink = [0u8; 256];
            while tcp.read(&mut sink).await? > 0 {}
            return tcp.shutdown().await;
        }
        loop {
            match read_message(tcp, ctx, &mut ctl, None, inflate.as_deref_mut()).await {
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
    if finished.is_err() && !sent {
        // The timeout struck with frames still queued: the close frame never left.
        count_close(code, CloseOutcome::Unsent, protocol);
        return CloseOutcome::Unsent;
    }
    CloseOutcome::Sent
}

/// Counts a server close under `herald_edge_closes_total`.
pub(crate) fn count_close(code: CloseCode, outcome: CloseOutcome, protocol: &'static str) {
    let label: &'static str = match (outcome, code) {
        (CloseOutcome::Sent, c) => c.label(),
        (CloseOutcome::Unsent, CloseCode::SlowConsumer) => "slow_consumer_unsent",
        (CloseOutcome::Unsent, _) => "close_unsent",
    };
    metrics::counter!("herald_edge_closes_total", "code" => label, "protocol" => protocol)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN as given, `opcode`, masked, `len` payload bytes.
    fn client_frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65_535 => {
                f.push(0x80 | 126);
                f.extend((len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend((len as u64).to_be_bytes());
            }
        }
        f.extend([1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(0xAB, len));
        f
    }

    #[test]
    fn frame_track_knows_where_frames_end_however_the_bytes_are_split() {
        // (frame, whether a message is half read after it)
        let frames = [
            (client_frame(true, 2, 5), false),
            (client_frame(true, 9, 0), false),
            (client_frame(true, 1, 300), false),
            (client_frame(false, 2, 125), true),
            (client_frame(true, 9, 3), true),
            (client_frame(true, 0, 126), false),
            (client_frame(true, 2, 70_000), false),
            (client_frame(true, 2, 65_535), false),
        ];
        for chunk in [1, 2, 3, 7, 13, 128, 100_000] {
            let mut t = FrameTrack::default();
            for (f, fragmented) in &frames {
                for (i, piece) in f.chunks(chunk).enumerate() {
                    let end = (i + 1) * chunk >= f.len();
                    t.handed(piece);
                    let at_rest = t.at_rest();
                    assert_eq!(
                        at_rest,
                        end && !fragmented,
                        "chunk {chunk}, len {}",
                        f.len()
                    );
                }
            }
        }
    }

    /// A connection holds tungstenite's reader only while a frame is coming: made when bytes
    /// arrive, dropped once they end at a frame's end; a frame split over reads is read whole.
    #[tokio::test]
    async fn an_idle_connection_holds_no_reader() {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let config = WebSocketConfig::default().read_buffer_size(128);
        let mut link = WsLink::new(Stream::Plain(tcp), None, None);
        let poll = |link: &mut WsLink| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            link.poll_read(&mut cx, &config)
        };
        assert!(poll(&mut link).is_pending());
        assert!(link.reader.is_none(), "nothing came: no reader");
        // A 300-byte text frame (it would grow a 128-byte buffer) in two writes.
        let mut f = client_frame(true, 1, 300);
        for (b, m) in f[8..].iter_mut().zip([1u8, 2, 3, 4].iter().cycle()) {
            *b = b'a' ^ m;
        }
        client.write_all(&f[..100]).await.expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while link.reader.is_none() {
            assert!(poll(&mut link).is_pending(), "half a frame is no message");
            assert!(std::time::Instant::now() < deadline, "the bytes never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Half a frame is held: the reader stays however often it is polled.
        for _ in 0..3 {
            assert!(poll(&mut link).is_pending());
            assert!(link.reader.is_some(), "the reader holds half a frame");
        }
        client.write_all(&f[100..]).await.expect("write");
        let m = loop {
            match poll(&mut link) {
                Poll::Ready(Inbound::Message(m)) => break m,
                Poll::Ready(_) => panic!("not a message"),
                Poll::Pending => {}
            }
            assert!(std::time::Instant::now() < deadline, "the frame never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(m, Message::Text("a".repeat(300).into()));
        assert!(poll(&mut link).is_pending());
        assert!(link.reader.is_none(), "at rest: the reader went");
        // A ping after that is answered by a new reader, which goes again.
        client
            .write_all(&client_frame(true, 9, 0))
            .await
            .expect("write");
        let m = loop {
            match poll(&mut link) {
                Poll::Ready(Inbound::Message(m)) => break m,
                Poll::Ready(_) => panic!("not a message"),
                Poll::Pending => {}
            }
            assert!(std::time::Instant::now() < deadline, "the ping never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(matches!(m, Message::Ping(_)));
        let mut q = WriteQueue::new(crate::transport::Framing::WebSocket);
        assert!(matches!(poll(&mut link), Poll::Ready(Inbound::Again)));
        link.take_ctl(&mut q);
        assert_eq!(q.queued_bytes(), 2, "the pong is queued");
        assert!(poll(&mut link).is_pending());
        assert!(link.reader.is_none());
    }
}
