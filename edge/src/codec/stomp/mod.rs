//! STOMP 1.2 (also 1.1 and 1.0) over WebSocket: the codec's pure parts, with no socket in sight.
//!
//! # Layout
//! - [`parse`]: client frames from the bytes of WebSocket messages (heart-beats, header
//!   escaping, `content-length`, bounded sizes).
//! - [`encode`]: the server's own frames (`CONNECTED`, `RECEIPT`, `ERROR`, heart-beats), each a
//!   complete WebSocket frame.
//! - [`connect`]: what a `CONNECT`/`STOMP` frame asks for: version, heart-beat, token.
//! - [`destination`]: the destinations a client may subscribe to and what each receives.
//! - [`message`]: a published message encoded once for every STOMP recipient of an edge, as a
//!   template whose shared parts are never copied per connection.
//! - [`codec`]: a STOMP connection over the session layer (connect, frames, closes).
//! - [`subs`]: one connection's subscriptions, acknowledgements and flow control; completes the
//!   templates for that connection.
//!
//! `docs/protocol-stomp.md` says what is supported and what is refused.

pub mod codec;
pub mod connect;
pub mod destination;
pub mod encode;
pub mod message;
pub mod parse;
pub mod subs;

/// The STOMP protocol versions this edge speaks, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// STOMP 1.0: no header escaping, no `NACK`, acknowledgements by `message-id`.
    V10,
    /// STOMP 1.1: escaping of `\n`, `\c` and `\\`; heart-beating.
    V11,
    /// STOMP 1.2: escaping adds `\r`; `ack` header on `MESSAGE`, acknowledgements by `id`.
    V12,
}

impl Version {
    /// The version as written in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V10 => "1.0",
            Version::V11 => "1.1",
            Version::V12 => "1.2",
        }
    }

    /// Parses one `accept-version` entry.
    pub fn from_header(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V10),
            "1.1" => Some(Version::V11),
            "1.2" => Some(Version::V12),
            _ => None,
        }
    }

    /// Whether header values of frames other than `CONNECT`/`CONNECTED` are escaped.
    pub fn escapes(self) -> bool {
        self >= Version::V11
    }
}

/// The WebSocket sub-protocols that select STOMP, and the version each implies.
pub const SUB_PROTOCOLS: &[(&str, Version)] = &[
    ("v12.stomp", Version::V12),
    ("v11.stomp", Version::V11),
    ("v10.stomp", Version::V10),
];

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of one frame, headers and body included (the edge's `max_message_bytes`).
    pub max_frame_bytes: usize,
    /// Most header lines in one frame.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 65_536,
            max_headers: 32,
        }
    }
}
