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

/// Frames on their way to the socket. A frame may span several queued pieces (an MQTT
/// `PUBLISH`: shared prefix, packet identifier, shared payload).
#[derive(Default)]
pub(crate) struct WriteQueue {
    pub(crate) frames: VecDeque<Bytes>,
    /// Bytes of the frame being written that are still queued (0: the next byte queued starts a
    /// frame). A frame begun must be finished before anything else.
    frame_left: u64,
}

/// The whole length of the WebSocket frame starting at `b`, from its header; `None` when `b`
/// does not hold the whole header.
fn frame_len(b: &[u8]) -> Option<u64> {
    let second = *b.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (header, len) = match second & 0x7f {
        126 => (4, u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
        127 => (10, u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    Some(header + mask + len)
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

    /// Drops every frame not yet started; the rest of a frame begun stays.
    pub(crate) fn discard_unsent(&mut self) {
        let mut left = self.frame_left;
        let mut kept = VecDeque::new();
        while left > 0 {
            let Some(mut piece) = self.frames.pop_front() else {
                break;
            };
            if piece.len() as u64 > left {
                piece.truncate(left as usize);
            }
            left -= piece.len() as u64;
            kept.push_back(piece);
        }
        self.frames = kept;
    }

    /// Follows frame boundaries over the first `n` bytes of `piece`, just written.
    fn wrote(&mut self, piece: &[u8], n: usize) {
        let mut at = 0;
        while at < n {
            if self.frame_left == 0 {
                // Every frame's header lies whole in the piece that starts it.
                self.frame_left = frame_len(&piece[at..]).unwrap_or((piece.len() - at) as u64);
            }
            let take = self.frame_left.min((n - at) as u64) as usize;
            self.frame_left -= take as u64;
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
/// code's label, or `<label>_unsent` when the close frame could not be written in time, and by
/// the `protocol` the connection spoke.
pub(crate) async fn close_and_finish(
    tcp: &mut Stream,
    ctx: &mut WebSocketContext,
    q: &mut WriteQueue,
    code: CloseCode,
    close_timeout: Duration,
    protocol: &'static str,
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
        count_close(code, CloseOutcome::Unsent, protocol);
        return CloseOutcome::Unsent;
    }
    CloseOutcome::Sent
}

/// Counts a server close under `herald_edge_closes_total`.
fn count_close(code: CloseCode, outcome: CloseOutcome, protocol: &'static str) {
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

    fn q(pieces: &[&'static [u8]]) -> WriteQueue {
        let mut q = WriteQueue::default();
        for p in pieces {
            q.push(Bytes::from_static(p));
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
        // One frame of 2 + 5 bytes in three pieces, then a whole frame.
        let mut w = q(&[b"\x82\x05ab", b"cd", b"e", b"\x81\x01z"]);
        write(&mut w, 3);
        w.discard_unsent();
        assert_eq!(bytes(&w), b"bcde");
        // Nothing begun: everything goes.
        let mut w = q(&[b"\x82\x05ab", b"cd", b"e", b"\x81\x01z"]);
        write(&mut w, 7);
        w.discard_unsent();
        assert!(w.frames.is_empty());
        let mut w = q(&[b"\x82\x05ab", b"cd", b"e", b"\x81\x01z"]);
        w.discard_unsent();
        assert!(w.frames.is_empty());
    }

    #[test]
    fn several_frames_in_one_piece_and_long_headers() {
        // A pong and a close in one piece (as tungstenite writes them), then a 200-byte frame.
        let mut big = vec![0x82u8, 126, 0, 200];
        big.extend([7u8; 200]);
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        let mut w = q(&[b"\x8a\x00\x88\x02\x03\xe8", big]);
        write(&mut w, 3);
        w.discard_unsent();
        assert_eq!(
            bytes(&w),
            b"\x02\x03\xe8",
            "the close frame begun is finished"
        );
        let mut w = q(&[b"\x8a\x00\x88\x02\x03\xe8", big]);
        write(&mut w, 6 + 100);
        w.discard_unsent();
        assert_eq!(bytes(&w).len(), 104);
        assert_eq!(frame_len(big), Some(204));
    }
}
