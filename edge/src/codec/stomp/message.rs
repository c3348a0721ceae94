//! A published message encoded once for every STOMP recipient on an edge.
//!
//! A `MESSAGE` frame is the same for every recipient except its `subscription` header (the
//! client's own id), its `ack` header (client acknowledgement modes) and, for a user's messages,
//! its `destination` (the recipient's `/user/queue/...`). STOMP headers may come in any order, so
//! the frame is cut in two:
//!
//! ```text
//! [WebSocket header]MESSAGE\nsubscription:<id>\n[ack:<n>\n][destination:/user/queue/<q>\n]   per connection, ~40 bytes
//! [destination:/topic/..\n]message-id:..\ncontent-type:..\ncontent-length:..\n[event:..\n][offset:..\nepoch:..\n]\n<payload>\0   shared
//! ```
//!
//! [`encode`] builds a *template*: one [`Bytes`] holding a small routing prefix (kind, group or
//! event, message id) and the shared part. It is never written as is: its first byte,
//! [`TEMPLATE_TAG`], cannot start a server WebSocket frame (those have the FIN bit set), so a
//! connection's queue tells templates from ready frames. A connection completes it with
//! [`super::subs::Subscriptions::render`] into two `Bytes`: a small head of its own and a
//! zero-copy slice of the shared part. The WebSocket header depends on the total length, so it is
//! computed per connection (2 to 10 bytes). The payload is never copied per connection.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::proto::bus::{Envelope, TargetKind};

use super::Version;
use super::encode::push_escaped;
use crate::frame::{OP_BINARY, OP_TEXT};

/// The first byte of a template.
pub const TEMPLATE_TAG: u8 = 0x00;

/// Bytes of the routing prefix before the variable fields.
const PREFIX: usize = 7;

/// What a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A broadcast: `/topic/{project}` subscriptions.
    Broadcast = 1,
    /// A group: `/topic/{project}/{group}` subscriptions.
    Group = 2,
    /// A user's message: `/user/queue/...` subscriptions.
    User = 3,
}

/// A template read back: where it goes and its shared part.
#[derive(Debug, Clone)]
pub struct Template<'a> {
    /// The target kind.
    pub kind: Kind,
    /// The WebSocket opcode to send it with (text, or binary for a payload that is not UTF-8).
    pub opcode: u8,
    /// The group name (group), the event name or "" (user), "" (broadcast).
    pub key: &'a str,
    /// The message id, as in the `message-id` header.
    pub message_id: &'a str,
    /// The shared part, from its first header to the NUL: a slice of the template.
    pub shared: Bytes,
}

/// Ids for envelopes that come without one (the router always sets one).
static FALLBACK_ID: AtomicU64 = AtomicU64::new(1);

/// Encodes `env` once as a template for every STOMP recipient on this edge; `None` for a kind
/// STOMP clients cannot receive (unspecified).
pub fn encode(env: &Envelope) -> Option<Bytes> {
    let kind = match env.kind() {
        TargetKind::Broadcast => Kind::Broadcast,
        TargetKind::Group => Kind::Group,
        TargetKind::User => Kind::User,
        TargetKind::Unspecified => return None,
    };
    let fallback;
    let message_id = if env.message_id.is_empty() || env.message_id.len() > 255 {
        fallback = format!("herald-{}", FALLBACK_ID.fetch_add(1, Ordering::Relaxed));
        fallback.as_str()
    } else {
        env.message_id.as_str()
    };
    let key = match kind {
        Kind::Broadcast => "",
        Kind::Group => env.name.as_str(),
        Kind::User => env.event.as_str(),
    };
    if key.len() > 255 {
        return None;
    }
    let body = env.payload.as_slice();
    // STOMP carries any bytes; a text frame needs UTF-8, so other payloads go in binary frames.
    let (opcode, content_type) = match std::str::from_utf8(body) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            (OP_TEXT, "application/json")
        }
        Ok(_) => (OP_TEXT, "text/plain;charset=utf-8"),
        Err(_) => (OP_BINARY, "application/octet-stream"),
    };
    let mut shared: Vec<u8> = Vec::with_capacity(160 + env.name.len() + env.project.len());
    if kind != Kind::User {
        shared.extend_from_slice(b"destination:/topic/");
        shared.extend_from_slice(env.project.as_bytes());
        if kind == Kind::Group {
            shared.push(b'/');
            push_escaped(&mut shared, &env.name, Version::V12);
        }
        shared.push(b'\n');
    }
    shared.extend_from_slice(b"message-id:");
    push_escaped(&mut shared, message_id, Version::V12);
    shared.extend_from_slice(b"\ncontent-type:");
    shared.extend_from_slice(content_type.as_bytes());
    shared.extend_from_slice(b"\ncontent-length:");
    shared.extend_from_slice(body.len().to_string().as_bytes());
    if !env.event.is_empty() {
        shared.extend_from_slice(b"\nevent:");
        push_escaped(&mut shared, &env.event, Version::V12);
    }
    if env.seq != 0 {
        // A recoverable target's position in its stream: what a SUBSCRIBE resumes after.
        shared.extend_from_slice(format!("\noffset:{}\nepoch:{}", env.seq, env.epoch).as_bytes());
    }
    shared.extend_from_slice(b"\n\n");
    let mut buf = BytesMut::with_capacity(
        PREFIX + key.len() + message_id.len() + shared.len() + body.len() + 1,
    );
    buf.put_u8(TEMPLATE_TAG);
    buf.put_u8(kind as u8);
    buf.put_u8(opcode);
    buf.put_u16(key.len() as u16);
    buf.put_u16(message_id.len() as u16);
    buf.put_slice(key.as_bytes());
    buf.put_slice(message_id.as_bytes());
    buf.put_slice(&shared);
    buf.put_slice(body);
    buf.put_u8(0);
    Some(buf.freeze())
}

/// Reads a template back; `None` when `frame` is a ready WebSocket frame (or not a template).
pub fn view(frame: &Bytes) -> Option<Template<'_>> {
    if frame.len() < PREFIX || frame[0] != TEMPLATE_TAG {
        return None;
    }
    let kind = match frame[1] {
        1 => Kind::Broadcast,
        2 => Kind::Group,
        3 => Kind::User,
        _ => return None,
    };
    let opcode = frame[2];
    let key_len = usize::from(u16::from_be_bytes([frame[3], frame[4]]));
    let id_len = usize::from(u16::from_be_bytes([frame[5], frame[6]]));
    let shared_at = PREFIX + key_len + id_len;
    if frame.len() < shared_at {
        return None;
    }
    let key = std::str::from_utf8(&frame[PREFIX..PREFIX + key_len]).ok()?;
    let message_id = std::str::from_utf8(&frame[PREFIX + key_len..shared_at]).ok()?;
    Some(Template {
        kind,
        opcode,
        key,
        message_id,
        shared: frame.slice(shared_at..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn env(kind: TargetKind, name: &str, event: &str, payload: &[u8]) -> Envelope {
        Envelope {
            version: 1,
            project: "demo".into(),
            kind: kind as i32,
            name: name.into(),
            event: event.into(),
            message_id: "0a0b0c0d-7".into(),
            payload: payload.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn group_template_holds_the_shared_part() {
        let t = encode(&env(TargetKind::Group, "news", "", br#"{"a":1}"#)).expect("encoded");
        let v = view(&t).expect("a template");
        assert_eq!(v.kind, Kind::Group);
        assert_eq!(v.key, "news");
        assert_eq!(v.message_id, "0a0b0c0d-7");
        assert_eq!(v.opcode, OP_TEXT);
        assert_eq!(
            &v.shared[..],
            b"destination:/topic/demo/news\nmessage-id:0a0b0c0d-7\ncontent-type:application/json\ncontent-length:7\n\n{\"a\":1}\0"
        );
    }

    #[test]
    fn user_template_leaves_the_destination_to_the_connection() {
        let t = encode(&env(TargetKind::User, "alice", "order:new", b"hi")).expect("encoded");
        let v = view(&t).expect("a template");
        assert_eq!(v.kind, Kind::User);
        assert_eq!(v.key, "order:new");
        assert_eq!(
            &v.shared[..],
            b"message-id:0a0b0c0d-7\ncontent-type:text/plain;charset=utf-8\ncontent-length:2\nevent:order\\cnew\n\nhi\0"
        );
    }

    #[test]
    fn recoverable_messages_carry_their_offset_and_epoch() {
        let mut e = env(TargetKind::Group, "news", "", b"1");
        e.seq = 42;
        e.epoch = 7;
        let t = encode(&e).expect("encoded");
        let v = view(&t).expect("a template");
        assert!(
            v.shared
                .ends_with(b"content-length:1\noffset:42\nepoch:7\n\n1\0"),
            "{:?}",
            v.shared
        );
    }

    #[test]
    fn binary_payloads_travel_raw_in_binary_frames() {
        let t = encode(&env(TargetKind::Broadcast, "", "", &[0xff, 0, 1])).expect("encoded");
        let v = view(&t).expect("a template");
        assert_eq!(v.opcode, OP_BINARY);
        assert!(v.shared.ends_with(b"content-length:3\n\n\xff\x00\x01\x00"));
        assert!(v.shared.starts_with(b"destination:/topic/demo\n"));
    }

    #[test]
    fn ready_frames_are_not_templates() {
        assert!(view(&crate::frame::text_frame("x")).is_none());
        assert!(view(&Bytes::from_static(&[0, 9, 1, 0, 0, 0, 0])).is_none());
        assert!(view(&Bytes::from_static(&[0, 1, 1, 0, 5, 0, 0])).is_none());
        assert!(encode(&env(TargetKind::Unspecified, "", "", b"")).is_none());
    }
}
