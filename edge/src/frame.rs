//! Server frames, pre-framed once: a WebSocket header (server frames are never masked) followed
//! by the JSON text of the native protocol. A delivered message is encoded here once and the same
//! [`Bytes`] go to every recipient's socket.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::proto::bus::{Envelope, TargetKind};

/// WebSocket opcode of a text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// WebSocket opcode of a binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// WebSocket opcode of a ping frame.
const OP_PING: u8 = 0x9;

/// Writes the header of a final, unmasked frame with `opcode` and `len` payload bytes.
pub(crate) fn put_header(buf: &mut BytesMut, opcode: u8, len: usize) {
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
}

/// The size of the header for a payload of `len` bytes.
pub(crate) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Frames `text` as one final text frame.
pub fn text_frame(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(text.len()) + text.len());
    put_header(&mut buf, OP_TEXT, text.len());
    buf.put_slice(text.as_bytes());
    buf.freeze()
}

/// The opcode, payload and whole length of the unmasked server frame at the start of `b`
/// (`None` when `b` does not hold it whole).
pub(crate) fn parse_server(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let first = *b.first()?;
    let second = *b.get(1)?;
    let (head, len): (usize, usize) = match second & 0x7f {
        126 => (4, usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    let payload = b.get(head..head.checked_add(len)?)?;
    Some((first & 0x0f, payload, head + len))
}

/// The ping frame the server sends to idle connections (empty payload).
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

/// A presence event's JSON:
/// `{"type":"presence","group":..,"event":"join"|"leave","user":..}` (ids need no escaping).
pub fn presence_json(group: &str, user: &str, join: bool) -> String {
    let event = if join { "join" } else { "leave" };
    format!(r#"{{"type":"presence","group":"{group}","event":"{event}","user":"{user}"}}"#)
}

/// Encodes a delivered message once, as a framed `msg` (or `presence`) text frame
/// ([`message_json`]).
pub fn message_frame(env: &Envelope) -> Bytes {
    text_frame(&message_json(env))
}

/// The `msg` frame's JSON:
/// `{"type":"msg","kind":..,["group"|"user":..,]["event":..,]["offset":..,"epoch":..,]"data"|"b64":..}`;
/// a presence event's ([`presence_json`]) for an envelope that carries one.
pub fn message_json(env: &Envelope) -> String {
    if let Some(p) = &env.presence {
        return presence_json(&env.name, &p.user, p.join);
    }
    let payload_is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&env.payload).is_ok();
    let mut json = String::with_capacity(64 + env.payload.len() * 4 / 3 + env.name.len());
    json.push_str(r#"{"type":"msg","kind":"#);
    match env.kind() {
        TargetKind::Group => {
            json.push_str(r#""group","group":""#);
            json.push_str(&env.name);
            json.push('"');
        }
        TargetKind::User => {
            json.push_str(r#""user","user":""#);
            json.push_str(&env.name);
            json.push('"');
        }
        _ => json.push_str(r#""broadcast""#),
    }
    if !env.event.is_empty() {
        json.push_str(r#","event":"#);
        push_json_string(&mut json, &env.event);
    }
    if env.seq != 0 {
        let _ = write!(json, r#","offset":{},"epoch":{}"#, env.seq, env.epoch);
    }
    if payload_is_json {
        json.push_str(r#","data":"#);
        // Valid JSON is UTF-8 by definition.
        json.push_str(std::str::from_utf8(&env.payload).unwrap_or("null"));
    } else {
        json.push_str(r#","b64":""#);
        base64::engine::general_purpose::STANDARD.encode_string(&env.payload, &mut json);
        json.push('"');
    }
    json.push('}');
    json
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires; writing to a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kind: TargetKind, name: &str, payload: &[u8]) -> Envelope {
        Envelope {
            version: 1,
            project: "p".into(),
            kind: kind as i32,
            name: name.into(),
            payload: payload.to_vec(),
            ..Default::default()
        }
    }

    fn body(frame: &Bytes) -> serde_json::Value {
        let skip = if frame[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[skip..]).expect("json")
    }

    #[test]
    fn json_payload_travels_as_is_and_costs_little() {
        let payload = format!(r#"{{"x":"{}"}}"#, "a".repeat(92));
        assert_eq!(payload.len(), 100);
        let f = message_frame(&env(TargetKind::Broadcast, "", payload.as_bytes()));
        assert!(f.len() < 150, "{} bytes on the wire", f.len());
        let v = body(&f);
        assert_eq!(v["kind"], "broadcast");
        assert_eq!(v["data"]["x"].as_str().map(str::len), Some(92));
    }

    #[test]
    fn other_bytes_travel_base64() {
        let f = message_frame(&env(TargetKind::Group, "g", &[0xff, 0, 1]));
        let v = body(&f);
        assert_eq!(v["group"], "g");
        assert_eq!(v["b64"], "/wAB");
    }

    #[test]
    fn headers_match_lengths() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let f = text_frame(&"a".repeat(n));
            assert_eq!(f.len(), header_len(n) + n);
            assert_eq!(f[0], 0x81);
        }
    }
}
