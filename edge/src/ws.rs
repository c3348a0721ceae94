//! The WebSocket transport every codec shares: tungstenite's [`WebSocketContext`] parses client
//! frames (and answers pings and closes) over a synchronous, non-blocking view of the stream, and
//! the connection writes pre-framed bytes itself, every queued frame in one vectored write.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use herald_core::codes::CloseCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::listener::Stream;

/// Most frames written in one vectored write.
const MAX_IOVECS: usize = 64;

/// Gives tungstenite a synchronous, non-blocking view of the stream: reads come from the stream
/// (`WouldBlock` when it has nothing, with the task's waker registered), writes (pongs, close
/// frames) are collected for the connection's own writer.
pub(crate) struct Io<'a, 'b> {
    pub(crate) stream: &'a mut Stream,
    pub(crate) cx: &'a mut Context<'b>,
    pub(crate) out: &'a mut BytesMut,
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
pub(crate) struct WriteQueue {
    pub(crate) frames: VecDeque<Bytes>,
    /// The first frame was partly written: it must be finished before anything else.
    partial: bool,
}

impl WriteQueue {
    /// Queues a frame (empty ones are ignored).
    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.frames.push_back(b);
        }
    }

    /// Queues the control frames tungstenite wrote (pongs, close).
    pub(crate) fn take_ctl(&mut self, ctl: &mut BytesMut) {
        if !ctl.is_empty() {
            self.push(std::mem::take(ctl).freeze());
        }
    }

    /// Drops every frame not yet started.
    pub(crate) fn discard_unsent(&mut self) {
        if self.partial {
            self.frames.truncate(1);
        } else {
            self.frames = VecDeque::new();
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

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self, tcp: &mut Stream) -> io::Result<()> {
        poll_fn(|cx| self.poll_write(tcp, cx)).await
    }
}

/// The close frame of `code`.
fn ws_close(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: code.reason().into(),
    }
}

/// Reads a message; `WouldBlock` only when control frames wait to be written.
pub(crate) async fn read_message(
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

/// Reads the first data message (text or binary), answering pings on the way.
pub(crate) async fn read_first(
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
) -> Result<Message, WsError> {
    let mut ctl = BytesMut::new();
    loop {
        let read = read_message(tcp, ctx, &mut ctl).await;
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
/// code's label, or `<label>_unsent` when the close frame could not be written in time.
pub(crate) async fn close_and_finish(
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
    q: &mut WriteQueue,
    code: CloseCode,
    close_timeout: Duration,
) -> CloseOutcome {
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
    let mut sent = false;
    let finished = timeout(close_timeout, async {
        let flushed = q.flush(tcp).await;
        sent = true;
        // Counted once the close frame left (or the peer was found gone), not after its answer.
        count_close(code, CloseOutcome::Sent);
        flushed?;
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
    if finished.is_err() && !sent {
        // The timeout struck with frames still queued: the close frame never left.
        count_close(code, CloseOutcome::Unsent);
        return CloseOutcome::Unsent;
    }
    CloseOutcome::Sent
}

/// Counts a server close under `herald_edge_closes_total`.
fn count_close(code: CloseCode, outcome: CloseOutcome) {
    let label: &'static str = match (outcome, code) {
        (CloseOutcome::Sent, c) => c.label(),
        (CloseOutcome::Unsent, CloseCode::SlowConsumer) => "slow_consumer_unsent",
        (CloseOutcome::Unsent, _) => "close_unsent",
    };
    metrics::counter!("herald_edge_closes_total", "code" => label).increment(1);
}
