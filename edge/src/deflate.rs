//! `permessage-deflate` (RFC 7692), where a project enables it: the offer read at the upgrade,
//! server messages compressed once for all their recipients, client messages inflated.
//!
//! # Negotiated always without context takeover
//! The edge answers an acceptable offer with
//! `permessage-deflate; server_no_context_takeover; client_no_context_takeover`:
//! - each server message is compressed on its own (no window carried from one message to the
//!   next), so a delivered message is compressed once, lazily when its first recipient that
//!   negotiated the extension is reached, and the same bytes (RSV1 set) go to every such
//!   recipient ([`deflate_frame`]; [`crate::codec::Frames`]);
//! - each client message is compressed on its own too, so no inflate window is kept per
//!   connection: a message is inflated in one go once whole, by a decompressor reused by the
//!   thread (reset per message), and nothing of it stays with the connection while idle.
//!
//! An offer asking for a server window below 15 bits (`server_max_window_bits`) is declined:
//! miniz_oxide's compressor cannot narrow its window. `client_max_window_bits` needs no answer
//! (the inflater takes any window).
//!
//! # Why compressed client frames are inflated before tungstenite reads them
//! tungstenite 0.30, which parses client frames ([`crate::ws`]), fails every frame with a
//! reserved bit set (`ProtocolError::NonZeroReservedBits`, `protocol/mod.rs`), with no setting to
//! accept RSV1 and no extension support. Rather than a fork, or a second frame parser and close
//! handshake in place of its [`WebSocketContext`], a connection that negotiated the extension
//! puts an [`Inflate`] between the socket and tungstenite: frames without RSV1 (control frames,
//! uncompressed messages) pass through byte for byte; a compressed message (its first frame with
//! RSV1, then its continuation frames) is taken aside, inflated once whole, and handed to
//! tungstenite as an ordinary masked message (mask key zero, in frames no larger than the
//! frame limit). tungstenite then does everything else as for any client: UTF-8, limits, pings
//! in between, the close handshake. The filter follows frame headers the way [`FrameTrack`]
//! does; it holds nothing between messages.
//!
//! # Limits
//! A compressed message may take at most `max_message_bytes` (plus the few bytes deflate adds to
//! incompressible data) on the wire, and inflates to at most `max_message_bytes`: past either the
//! connection closes with 1009 (`message too big`), inflating no further than one byte beyond the
//! limit (a decompression bomb costs the edge the limit, not its ratio). Data that does not
//! inflate, or a compressed message broken by other data frames, closes it with 1002.
//!
//! [`WebSocketContext`]: tokio_tungstenite::tungstenite::protocol::WebSocketContext
//! [`FrameTrack`]: crate::ws::FrameTrack

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use herald_core::codes::CloseCode;

/// The extension's name.
pub const EXTENSION: &str = "permessage-deflate";

/// The answer to an accepted offer (`Sec-WebSocket-Extensions`).
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The compression level of server messages (1: fastest; see benches/README.md for the cost).
const LEVEL: u32 = 1;

/// Payloads shorter than this are sent as they are: deflate cannot win much on them.
pub const MIN_BYTES: usize = 64;

/// The empty stored block that ends a flushed deflate stream; removed from every compressed
/// message and put back before inflating (RFC 7692, 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether a `Sec-WebSocket-Extensions` header value holds an offer of `permessage-deflate` the
/// edge can accept (RFC 7692, 7.1): every parameter known, none repeated, values valid, and no
/// server window below 15 bits.
pub fn acceptable_offer(header: &str) -> bool {
    header.split(',').any(|ext| {
        let mut parts = ext.split(';').map(str::trim);
        if !parts
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case(EXTENSION))
        {
            return false;
        }
        let mut seen = [false; 4];
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            let (i, ok) = match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" => (0, value.is_none()),
                "client_no_context_takeover" => (1, value.is_none()),
                // The edge compresses with a 32 KiB window (15 bits) and cannot promise less.
                "server_max_window_bits" => (2, value.is_some_and(|v| window_bits(v) == Some(15))),
                // No value: the client lets the server choose; any value: the inflater takes it.
                "client_max_window_bits" => (3, value.is_none_or(|v| window_bits(v).is_some())),
                _ => return false,
            };
            if !ok || std::mem::replace(&mut seen[i], true) {
                return false;
            }
        }
        true
    })
}

/// A window size parameter: 8 to 15, digits only.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// The compressor of this thread, reset for every message (no context takeover): its
    /// state (about 300 KiB with miniz_oxide) is made once per thread, not per message.
    static DEFLATER: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    /// The decompressor of this thread, reset for every client message.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The compressed form of a pre-framed, final, unmasked server frame (`frame`: a header as
/// [`crate::frame::put_header`] writes, then the payload): the same opcode with RSV1 set and the
/// payload deflated. `None` when deflate would not make it smaller (a short or incompressible
/// payload): the frame is then sent as it is, which the extension allows for any message.
pub fn deflate_frame(frame: &[u8]) -> Option<Bytes> {
    let (first, payload) = split_frame(frame)?;
    if payload.len() < MIN_BYTES {
        return None;
    }
    // Room for the longest header in front, so the frame is made in place.
    const ROOM: usize = 10;
    let mut out = Vec::with_capacity(ROOM + payload.len());
    out.resize(ROOM, 0);
    let done = DEFLATER.with_borrow_mut(|c| {
        c.reset();
        match c.compress_vec(payload, &mut out, FlushCompress::Sync) {
            Ok(Status::Ok | Status::StreamEnd) => c.total_in() == payload.len() as u64,
            _ => false,
        }
    });
    // Out of room before the flush was written: not smaller.
    if !done || !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    let len = out.len() - ROOM;
    if len >= payload.len() {
        return None;
    }
    let head_len = crate::frame::header_len(len);
    let mut head = BytesMut::with_capacity(head_len);
    crate::frame::put_header(&mut head, first & 0x0f, len);
    head[0] |= RSV1;
    let at = ROOM - head_len;
    out[at..ROOM].copy_from_slice(&head);
    Some(Bytes::from(out).slice(at..))
}

/// The first byte and the payload of a final, unmasked frame, when `frame` is exactly one.
fn split_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let first = *frame.first()?;
    let second = *frame.get(1)?;
    if first & 0xf0 != 0x80 || second & 0x80 != 0 {
        return None;
    }
    let (head, len) = match second {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])),
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    (frame.len() == head + len).then(|| (first, &frame[head..]))
}

/// RSV1 in a frame's first byte: the message is compressed.
const RSV1: u8 = 0x40;

/// Why a client's compressed message was refused; carried in the I/O error tungstenite returns.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// The message is larger than `max_message_bytes`, compressed or inflated (or a frame than
    /// the frame limit).
    #[error("compressed message too big")]
    TooBig,
    /// The frames break the extension's rules (RSV1 on a continuation frame, a compressed
    /// message interrupted by another data frame, an unmasked frame).
    #[error("permessage-deflate: {0}")]
    Protocol(&'static str),
    /// The payload is not a deflate stream.
    #[error("permessage-deflate: data does not inflate")]
    Corrupt,
}

impl InflateError {
    /// The close code answering it.
    pub fn close_code(&self) -> CloseCode {
        match self {
            InflateError::TooBig => CloseCode::MessageTooBig,
            InflateError::Protocol(_) | InflateError::Corrupt => CloseCode::ProtocolError,
        }
    }

    /// The refusal as the I/O error tungstenite passes on ([`InflateError::of`] finds it again).
    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }

    /// The refusal an I/O error carries, if it is one.
    pub fn of(e: &std::io::Error) -> Option<&InflateError> {
        e.get_ref()?.downcast_ref()
    }
}

/// Inflates the compressed messages of one connection's client frames on their way to
/// tungstenite; every other byte passes through unchanged (see the module doc). About 80 bytes
/// while idle, its buffers empty.
#[derive(Debug)]
pub(crate) struct Inflate {
    /// Bytes for tungstenite not yet handed over: inflated messages, then what followed them.
    out: Vec<u8>,
    /// How much of `out` was handed over.
    out_at: usize,
    /// The compressed message coming in, unmasked.
    data: Vec<u8>,
    /// The header of the current frame.
    head: [u8; 14],
    /// Header bytes seen (0: at a frame's start, or in its payload while `left > 0`).
    seen: u8,
    /// The current header's whole length, once its second byte is seen.
    head_len: u8,
    /// Whether the current frame is taken aside (part of a compressed message).
    taking: bool,
    /// Whether a compressed message's final frame is the current one.
    fin: bool,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// Offset in the current frame's payload (for the mask).
    at: u64,
    /// The opcode of the compressed message coming in (0: none).
    open: u8,
    /// An uncompressed message is half way (a data frame without FIN passed).
    plain_open: bool,
    /// `max_message_bytes`.
    max_message: u32,
    /// The frame limit (`max_frame_bytes`, or the message limit).
    max_frame: u32,
}

impl Inflate {
    /// A filter for a connection under these limits.
    pub(crate) fn new(max_message: usize, max_frame: usize) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(1);
        Self {
            out: Vec::new(),
            out_at: 0,
            data: Vec::new(),
            head: [0; 14],
            seen: 0,
            head_len: 0,
            taking: false,
            fin: false,
            left: 0,
            at: 0,
            open: 0,
            plain_open: false,
            max_message: clamp(max_message),
            max_frame: clamp(max_frame),
        }
    }

    /// Whether bytes wait to be handed over.
    pub(crate) fn has_output(&self) -> bool {
        self.out_at < self.out.len()
    }

    /// Hands over waiting bytes into `buf`; how many.
    pub(crate) fn take_output(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.out.len() - self.out_at);
        buf[..n].copy_from_slice(&self.out[self.out_at..self.out_at + n]);
        self.out_at += n;
        if self.out_at == self.out.len() {
            // Nothing stays with an idle connection.
            self.out = Vec::new();
            self.out_at = 0;
        }
        n
    }

    /// The most compressed bytes a message may take: the message limit plus what deflate adds
    /// to data it cannot compress (5 bytes per stored block of up to 64 KiB).
    fn max_compressed(&self) -> u64 {
        let m = u64::from(self.max_message);
        m + m / 8192 + 64
    }

    /// Filters bytes just read, in place: the bytes to hand to tungstenite now are moved to the
    /// front of `b` and counted; bytes of compressed messages are taken aside; once a compressed
    /// message is whole, it and every byte after it wait in the output ([`Inflate::take_output`]).
    pub(crate) fn filter(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.filter_inner(b).map_err(InflateError::into_io)
    }

    fn filter_inner(&mut self, b: &mut [u8]) -> Result<usize, InflateError> {
        let mut i = 0;
        let mut w = 0;
        while i < b.len() {
            if self.seen == 0 && self.left > 0 {
                // Payload, in bulk.
                let n = (b.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                if self.taking {
                    let hl = usize::from(self.head_len);
                    let mask = [
                        self.head[hl - 4],
                        self.head[hl - 3],
                        self.head[hl - 2],
                        self.head[hl - 1],
                    ];
                    let start = self.data.len();
                    self.data.extend_from_slice(&b[i..i + n]);
                    for (k, byte) in self.data[start..].iter_mut().enumerate() {
                        *byte ^= mask[((self.at + k as u64) & 3) as usize];
                    }
                } else {
                    self.pass(b, &mut w, i, n);
                }
                i += n;
                self.left -= n as u64;
                self.at += n as u64;
                if self.left == 0 {
                    self.frame_end()?;
                }
                continue;
            }
            let byte = b[i];
            if self.seen == 0 {
                self.start_frame(byte)?;
            }
            if !self.taking {
                self.pass(b, &mut w, i, 1);
            }
            i += 1;
            self.head[self.seen as usize] = byte;
            self.seen += 1;
            if self.seen == 2 {
                let mask = if byte & 0x80 != 0 { 4 } else { 0 };
                let ext = match byte & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                self.head_len = 2 + ext + mask;
                if self.taking && mask == 0 {
                    return Err(InflateError::Protocol("unmasked client frame"));
                }
            }
            if self.seen >= 2 && self.seen == self.head_len {
                self.header_done()?;
            }
        }
        Ok(w)
    }

    /// Passes `n` bytes at `i` on: in place while nothing waits in the output, else after it.
    fn pass(&mut self, b: &mut [u8], w: &mut usize, i: usize, n: usize) {
        if self.has_output() {
            self.out.extend_from_slice(&b[i..i + n]);
        } else {
            b.copy_within(i..i + n, *w);
            *w += n;
        }
    }

    /// A frame starts with `first`: decides whether it is taken aside.
    fn start_frame(&mut self, first: u8) -> Result<(), InflateError> {
        let opcode = first & 0x0f;
        let fin = first & 0x80 != 0;
        let rsv1 = first & RSV1 != 0;
        self.taking = false;
        self.fin = fin;
        // RSV2, RSV3, control frames and unknown opcodes pass: tungstenite refuses what is wrong.
        if first & 0x30 != 0 || opcode > 2 {
            return Ok(());
        }
        match (opcode, rsv1, self.open) {
            (1 | 2, true, 0) => {
                if self.plain_open {
                    return Err(InflateError::Protocol(
                        "a new message before the last ended",
                    ));
                }
                self.open = opcode;
                self.taking = true;
            }
            (0, false, o) if o != 0 => self.taking = true,
            (0, true, _) => return Err(InflateError::Protocol("RSV1 on a continuation frame")),
            (1 | 2, _, o) if o != 0 => {
                return Err(InflateError::Protocol(
                    "a new message before the last ended",
                ));
            }
            (1 | 2, false, _) => self.plain_open = !fin,
            _ => {
                if fin {
                    self.plain_open = false;
                }
            }
        }
        Ok(())
    }

    /// The current frame's header is whole.
    fn header_done(&mut self) -> Result<(), InflateError> {
        let h = &self.head;
        let len = match self.head_len {
            4 | 8 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            10 | 14 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            _ => u64::from(h[1] & 0x7f),
        };
        self.seen = 0;
        self.left = len;
        self.at = 0;
        if self.taking {
            if len > u64::from(self.max_frame)
                || self.data.len() as u64 + len > self.max_compressed()
            {
                return Err(InflateError::TooBig);
            }
            self.data.reserve_exact(len as usize);
        }
        if len == 0 {
            self.frame_end()?;
        }
        Ok(())
    }

    /// The current frame ended.
    fn frame_end(&mut self) -> Result<(), InflateError> {
        if !self.taking || !self.fin {
            return Ok(());
        }
        self.taking = false;
        let opcode = std::mem::take(&mut self.open);
        let mut data = std::mem::take(&mut self.data);
        data.extend_from_slice(&TAIL);
        let msg = inflate(&data, self.max_message as usize)?;
        drop(data);
        // As frames tungstenite takes: masked (key zero: the payload as is), none over the frame
        // limit.
        let max_frame = self.max_frame as usize;
        let mut chunks = msg.chunks(max_frame).peekable();
        let mut first = true;
        let frame = |out: &mut Vec<u8>, chunk: &[u8], last: bool, first: bool| {
            let op = if first { opcode } else { 0 };
            out.push(if last { 0x80 } else { 0 } | op);
            let len = chunk.len();
            if len < 126 {
                out.push(0x80 | len as u8);
            } else if len <= usize::from(u16::MAX) {
                out.push(0x80 | 126);
                out.put_u16(len as u16);
            } else {
                out.push(0x80 | 127);
                out.put_u64(len as u64);
            }
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(chunk);
        };
        let mut out = std::mem::take(&mut self.out);
        out.drain(..self.out_at);
        self.out_at = 0;
        out.reserve(msg.len() + 14 * (msg.len() / max_frame + 1));
        if msg.is_empty() {
            frame(&mut out, &[], true, true);
        }
        while let Some(chunk) = chunks.next() {
            frame(&mut out, chunk, chunks.peek().is_none(), first);
            first = false;
        }
        self.out = out;
        Ok(())
    }
}

/// Inflates one message (its deflate data with [`TAIL`] put back), to at most `limit` bytes.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with_borrow_mut(|d| {
        d.reset(false);
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).max(64).min(limit + 1));
        loop {
            let used = d.total_in() as usize;
            let before = (used, out.len());
            let status = d
                .decompress_vec(&data[used..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let consumed = d.total_in() as usize == data.len();
            if status == Status::StreamEnd || (consumed && out.len() < out.capacity()) {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                // One byte past the limit is enough to know it is passed.
                let room = (out.capacity() * 2).min(limit + 1) - out.len();
                if room == 0 {
                    return Err(InflateError::TooBig);
                }
                out.reserve_exact(room);
            } else if before == (d.total_in() as usize, out.len()) {
                // Neither input taken nor output made, with room left: a truncated stream.
                return Err(InflateError::Corrupt);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::text_frame;

    /// A client frame as a browser sends it: masked, RSV1 on the first frame of a compressed
    /// message.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        f.extend(key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn compress(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync)
            .expect("compress");
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// Unmasked payloads of the frames tungstenite would get, with their first bytes.
    fn frames_of(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let (hl, len) = match b[1] & 0x7f {
                126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            let mask: [u8; 4] = b[hl..hl + 4].try_into().unwrap();
            let p = b[hl + 4..hl + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ mask[i % 4])
                .collect();
            v.push((b[0], p));
            b = &b[hl + 4 + len..];
        }
        v
    }

    /// Feeds `input` in pieces of `chunk` and collects what tungstenite would read.
    fn run(f: &mut Inflate, input: &[u8], chunk: usize) -> Result<Vec<u8>, InflateError> {
        let mut got = Vec::new();
        for piece in input.chunks(chunk) {
            let mut b = piece.to_vec();
            let n = f.filter(&mut b).map_err(|e| {
                e.into_inner()
                    .unwrap()
                    .downcast::<InflateError>()
                    .map(|b| *b)
                    .unwrap()
            })?;
            got.extend_from_slice(&b[..n]);
            let mut buf = [0u8; 7];
            while f.has_output() {
                let n = f.take_output(&mut buf);
                got.extend_from_slice(&buf[..n]);
            }
        }
        Ok(got)
    }

    #[test]
    fn offers() {
        assert!(acceptable_offer("permessage-deflate"));
        assert!(acceptable_offer(
            "permessage-deflate; client_max_window_bits"
        ));
        assert!(acceptable_offer(
            "x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        ));
        assert!(acceptable_offer(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; server_max_window_bits=\"15\""
        ));
        assert!(!acceptable_offer(
            "permessage-deflate; server_max_window_bits=10"
        ));
        assert!(!acceptable_offer(
            "permessage-deflate; client_max_window_bits=16"
        ));
        assert!(!acceptable_offer(
            "permessage-deflate; client_max_window_bits=08x"
        ));
        assert!(!acceptable_offer(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ));
        assert!(!acceptable_offer("permessage-deflate; unknown"));
        assert!(!acceptable_offer("x-webkit-deflate-frame"));
        assert!(!acceptable_offer(""));
    }

    #[test]
    fn server_frames_compress_once_and_inflate_to_the_same_text() {
        let text = format!(r#"{{"type":"msg","data":"{}"}}"#, "hello ".repeat(50));
        let plain = text_frame(&text);
        let z = deflate_frame(&plain).expect("smaller");
        assert_eq!(z[0], 0x80 | RSV1 | 1);
        // The same frame without RSV1 is one frame of the compressed payload.
        let mut unflagged = z.to_vec();
        unflagged[0] &= !RSV1;
        let (_, payload) = split_frame(&unflagged).expect("one frame");
        assert!(payload.len() < text.len() / 4, "{} bytes", payload.len());
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(text.len() + 10);
        d.decompress_vec(&[payload, &TAIL].concat(), &mut out, FlushDecompress::Sync)
            .expect("inflate");
        assert_eq!(out, text.as_bytes());
        // Short or incompressible payloads stay as they are.
        assert!(deflate_frame(&text_frame("short")).is_none());
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4000)
            .map(|_| {
                // xorshift64: bytes deflate cannot shrink.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = BytesMut::new();
        crate::frame::put_header(&mut f, crate::frame::OP_BINARY, noise.len());
        f.extend_from_slice(&noise);
        assert!(deflate_frame(&f).is_none());
        // A large payload (64-bit length header) too.
        let big = "abc".repeat(30_000);
        let z = deflate_frame(&text_frame(&big)).expect("smaller");
        assert!(z.len() < 2_000);
    }

    #[test]
    fn compressed_messages_are_inflated_and_the_rest_passes_whatever_the_pieces() {
        let text = "compressed hello ".repeat(20);
        let z = compress(text.as_bytes());
        let mut input = Vec::new();
        input.extend(client_frame(0x81, b"plain"));
        input.extend(client_frame(0xC1, &z));
        input.extend(client_frame(0x89, b"ping"));
        // A fragmented compressed message with a ping in between.
        let z2 = compress(b"second, in pieces");
        input.extend(client_frame(0x42, &z2[..3]));
        input.extend(client_frame(0x89, b""));
        input.extend(client_frame(0x80, &z2[3..]));
        // An empty compressed message.
        input.extend(client_frame(0xC1, &compress(b"")));
        input.extend(client_frame(0x82, b"after"));
        for chunk in [1, 2, 5, 64, 10_000] {
            let mut f = Inflate::new(65_536, 65_536);
            let got = frames_of(&run(&mut f, &input, chunk).expect("filter"));
            assert_eq!(
                got,
                vec![
                    (0x81, b"plain".to_vec()),
                    (0x81, text.as_bytes().to_vec()),
                    (0x89, b"ping".to_vec()),
                    (0x89, vec![]),
                    (0x82, b"second, in pieces".to_vec()),
                    (0x81, vec![]),
                    (0x82, b"after".to_vec()),
                ],
                "chunk {chunk}"
            );
            assert!(
                f.out.capacity() == 0 && f.data.capacity() == 0,
                "holds nothing"
            );
        }
    }

    #[test]
    fn an_inflated_message_is_framed_under_the_frame_limit() {
        let text = "x".repeat(1000);
        let input = client_frame(0xC1, &compress(text.as_bytes()));
        let mut f = Inflate::new(65_536, 300);
        let got = frames_of(&run(&mut f, &input, 100).expect("filter"));
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, 0x01);
        assert_eq!(got[3].0, 0x80);
        let joined: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
        assert_eq!(joined, text.as_bytes());
    }

    #[test]
    fn bombs_and_broken_streams_are_refused() {
        // 10 MB of zeros compress to about 10 KB.
        let bomb = compress(&vec![0u8; 10_000_000]);
        let mut f = Inflate::new(65_536, 65_536);
        let e = run(&mut f, &client_frame(0xC2, &bomb), 4096).unwrap_err();
        assert!(matches!(e, InflateError::TooBig), "{e:?}");
        assert_eq!(e.close_code(), CloseCode::MessageTooBig);
        // Exactly the limit inflates; one byte more does not.
        let mut f = Inflate::new(1000, 1000);
        assert!(run(&mut f, &client_frame(0xC2, &compress(&[7; 1000])), 64).is_ok());
        let mut f = Inflate::new(1000, 1000);
        let e = run(&mut f, &client_frame(0xC2, &compress(&[7; 1001])), 64).unwrap_err();
        assert!(matches!(e, InflateError::TooBig));
        // Garbage.
        let mut f = Inflate::new(65_536, 65_536);
        let e = run(&mut f, &client_frame(0xC1, &[0xff; 40]), 64).unwrap_err();
        assert!(matches!(e, InflateError::Corrupt), "{e:?}");
        // RSV1 on a continuation frame; a new message inside a compressed one.
        let mut f = Inflate::new(65_536, 65_536);
        let mut input = client_frame(0x41, &compress(b"abc")[..2]);
        input.extend(client_frame(0xC0, b""));
        assert!(matches!(
            run(&mut f, &input, 64),
            Err(InflateError::Protocol(_))
        ));
        let mut f = Inflate::new(65_536, 65_536);
        let mut input = client_frame(0x41, &compress(b"abc")[..2]);
        input.extend(client_frame(0x81, b"x"));
        assert!(matches!(
            run(&mut f, &input, 64),
            Err(InflateError::Protocol(_))
        ));
        // A compressed frame over the frame limit, before its payload comes.
        let mut f = Inflate::new(65_536, 100);
        let e = run(&mut f, &client_frame(0xC1, &[0; 200])[..10], 64).unwrap_err();
        assert!(matches!(e, InflateError::TooBig));
    }
}
