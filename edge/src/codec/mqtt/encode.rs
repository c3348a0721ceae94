//! Server packets, each as one complete WebSocket binary frame ready for the socket: `CONNACK`,
//! `SUBACK`, `UNSUBACK`, `PUBACK`/`PUBREC` (refusing a client's publish), `PINGRESP` and 5.0's
//! `DISCONNECT`. Delivered messages (`PUBLISH`) are encoded in [`super::delivery`].

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::Version;
use super::reason::{ConnectReturn, Reason};
use crate::frame::{OP_BINARY, header_len, put_header};

/// Appends `n` as an MQTT variable byte integer.
pub(crate) fn put_varint(buf: &mut impl BufMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// The length of `n` as a variable byte integer.
pub(crate) fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Frames one packet: WebSocket header, fixed header, `body`.
fn packet(first: u8, body: &[u8]) -> Bytes {
    let mqtt_len = 1 + varint_len(body.len()) + body.len();
    let mut buf = BytesMut::with_capacity(header_len(mqtt_len) + mqtt_len);
    put_header(&mut buf, OP_BINARY, mqtt_len);
    buf.put_u8(first);
    put_varint(&mut buf, body.len());
    buf.put_slice(body);
    buf.freeze()
}

/// Appends a property list (its length, then `props`).
fn put_properties(body: &mut Vec<u8>, props: &[u8]) {
    put_varint(body, props.len());
    body.extend_from_slice(props);
}

fn put_string_property(props: &mut Vec<u8>, id: u8, s: &str) {
    // MQTT strings hold at most 65,535 bytes; Herald's own strings are far shorter.
    let s = truncate(s, u16::MAX as usize);
    props.push(id);
    props.extend_from_slice(&(s.len() as u16).to_be_bytes());
    props.extend_from_slice(s.as_bytes());
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `CONNACK` of MQTT 3.1.1 (and 3.1).
pub fn connack_v3(session_present: bool, code: ConnectReturn) -> Bytes {
    let present = session_present && code == ConnectReturn::Accepted;
    packet(0x20, &[present as u8, code.byte()])
}

/// What a 5.0 `CONNACK` tells beyond its reason code.
#[derive(Debug, Default, Clone)]
pub struct ConnAckProperties<'a> {
    /// The session expiry interval Herald applies, when it differs from the client's.
    pub session_expiry: Option<u32>,
    /// The largest packet Herald accepts from the client.
    pub maximum_packet_size: Option<u32>,
    /// The client id Herald assigned to a client that sent an empty one.
    pub assigned_client_id: Option<&'a str>,
    /// The keep alive Herald applies, when it differs from the client's.
    pub server_keep_alive: Option<u16>,
    /// A reason string (refusals).
    pub reason_string: Option<&'a str>,
    /// Whether to announce what Herald does not offer: retained messages, wildcard
    /// subscriptions, subscription identifiers, shared subscriptions (on success).
    pub capabilities: bool,
}

/// `CONNACK` of MQTT 5.0.
pub fn connack_v5(session_present: bool, reason: Reason, p: &ConnAckProperties<'_>) -> Bytes {
    let mut props = Vec::new();
    if let Some(n) = p.session_expiry {
        props.push(0x11);
        props.extend_from_slice(&n.to_be_bytes());
    }
    if let Some(n) = p.maximum_packet_size {
        props.push(0x27);
        props.extend_from_slice(&n.to_be_bytes());
    }
    if let Some(id) = p.assigned_client_id {
        put_string_property(&mut props, 0x12, id);
    }
    if let Some(n) = p.server_keep_alive {
        props.push(0x13);
        props.extend_from_slice(&n.to_be_bytes());
    }
    if p.capabilities {
        // Retain available, wildcard, subscription identifiers, shared subscriptions: all 0.
        props.extend_from_slice(&[0x25, 0, 0x28, 0, 0x29, 0, 0x2A, 0]);
    }
    if let Some(s) = p.reason_string {
        put_string_property(&mut props, 0x1F, s);
    }
    let present = session_present && reason == Reason::Success;
    let mut body = vec![present as u8, reason.byte()];
    put_properties(&mut body, &props);
    packet(0x20, &body)
}

/// `SUBACK`: one return/reason code per topic filter, in order. A reason string (5.0 only) when
/// given.
pub fn suback(
    version: Version,
    packet_id: u16,
    codes: &[u8],
    reason_string: Option<&str>,
) -> Bytes {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version.is_v5() {
        let mut props = Vec::new();
        if let Some(s) = reason_string {
            put_string_property(&mut props, 0x1F, truncate(s, 1024));
        }
        put_properties(&mut body, &props);
    }
    body.extend_from_slice(codes);
    packet(0x90, &body)
}

/// `UNSUBACK`: 3.1.1 has no payload; 5.0 one reason code per topic filter.
pub fn unsuback(version: Version, packet_id: u16, codes: &[u8]) -> Bytes {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0);
        body.extend_from_slice(codes);
    }
    packet(0xb0, &body)
}

/// 5.0 `PUBACK` (QoS 1) or `PUBREC` (QoS 2) with a reason code: how a client's publish is
/// refused while the connection stays.
pub fn publish_refused(qos: u8, packet_id: u16, reason: Reason) -> Bytes {
    let first = if qos == 2 { 0x50 } else { 0x40 };
    let [hi, lo] = packet_id.to_be_bytes();
    packet(first, &[hi, lo, reason.byte()])
}

/// `PINGRESP`.
pub fn pingresp() -> Bytes {
    Bytes::from_static(&[0x80 | OP_BINARY, 2, 0xd0, 0])
}

/// 5.0 `DISCONNECT` with a reason code and an optional reason string.
pub fn disconnect(reason: Reason, reason_string: Option<&str>) -> Bytes {
    if reason == Reason::Success && reason_string.is_none() {
        return packet(0xe0, &[]);
    }
    let mut body = vec![reason.byte()];
    let mut props = Vec::new();
    if let Some(s) = reason_string {
        put_string_property(&mut props, 0x1F, truncate(s, 1024));
    }
    put_properties(&mut body, &props);
    packet(0xe0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MQTT packet inside a server's WebSocket frame.
    pub(crate) fn unframe(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0], 0x82, "a final binary frame");
        let skip = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &frame[skip..]
    }

    #[test]
    fn connack_3_1_1() {
        assert_eq!(
            unframe(&connack_v3(false, ConnectReturn::Accepted)),
            [0x20, 2, 0, 0]
        );
        assert_eq!(
            unframe(&connack_v3(true, ConnectReturn::Accepted)),
            [0x20, 2, 1, 0]
        );
        assert_eq!(
            unframe(&connack_v3(true, ConnectReturn::BadUserNameOrPassword)),
            [0x20, 2, 0, 4],
            "session present only with success"
        );
    }

    #[test]
    fn connack_5_with_properties() {
        let p = ConnAckProperties {
            maximum_packet_size: Some(65_536),
            assigned_client_id: Some("h-1"),
            capabilities: true,
            ..Default::default()
        };
        let f = connack_v5(false, Reason::Success, &p);
        let m = unframe(&f);
        assert_eq!(&m[..3], [0x20, m.len() as u8 - 2, 0]);
        assert_eq!(m[3], 0);
        let props = &m[5..];
        assert_eq!(m[4] as usize, props.len());
        assert_eq!(&props[..5], [0x27, 0, 1, 0, 0]);
        assert_eq!(&props[5..11], [0x12, 0, 3, b'h', b'-', b'1']);
        assert_eq!(&props[11..], [0x25, 0, 0x28, 0, 0x29, 0, 0x2A, 0]);
        let refused = connack_v5(
            true,
            Reason::BadUserNameOrPassword,
            &ConnAckProperties {
                reason_string: Some("invalid token"),
                ..Default::default()
            },
        );
        let m = unframe(&refused);
        assert_eq!(&m[2..4], [0, 0x86]);
        assert_eq!(&m[5..8], [0x1F, 0, 13]);
        assert_eq!(&m[8..], b"invalid token");
    }

    #[test]
    fn acks() {
        assert_eq!(
            unframe(&suback(Version::V3_1_1, 7, &[1, 0x80], None)),
            [0x90, 4, 0, 7, 1, 0x80]
        );
        assert_eq!(
            unframe(&suback(Version::V5, 7, &[0xa2], None)),
            [0x90, 4, 0, 7, 0, 0xa2]
        );
        let with_reason = suback(Version::V5, 7, &[0x87], Some("no"));
        assert_eq!(
            unframe(&with_reason),
            [0x90, 9, 0, 7, 5, 0x1F, 0, 2, b'n', b'o', 0x87]
        );
        assert_eq!(
            unframe(&unsuback(Version::V3_1_1, 9, &[0])),
            [0xb0, 2, 0, 9]
        );
        assert_eq!(
            unframe(&unsuback(Version::V5, 9, &[0, 0x11])),
            [0xb0, 5, 0, 9, 0, 0, 0x11]
        );
        assert_eq!(
            unframe(&publish_refused(1, 3, Reason::NotAuthorized)),
            [0x40, 3, 0, 3, 0x87]
        );
        assert_eq!(
            unframe(&publish_refused(2, 3, Reason::NotAuthorized)),
            [0x50, 3, 0, 3, 0x87]
        );
        assert_eq!(unframe(&pingresp()), [0xd0, 0]);
    }

    #[test]
    fn disconnects() {
        assert_eq!(unframe(&disconnect(Reason::Success, None)), [0xe0, 0]);
        assert_eq!(
            unframe(&disconnect(Reason::KeepAliveTimeout, None)),
            [0xe0, 2, 0x8d, 0]
        );
        let long = "é".repeat(2000);
        let f = disconnect(Reason::ProtocolError, Some(&long));
        let m = unframe(&f);
        // Type, remaining length (2 bytes), reason, property length (2 bytes), 0x1F, length.
        assert_eq!((m[0], m[3], m[6]), (0xe0, 0x82, 0x1F));
        let n = u16::from_be_bytes([m[7], m[8]]) as usize;
        assert_eq!(m.len(), 9 + n);
        assert!(n <= 1024 && std::str::from_utf8(&m[9..]).is_ok());
    }

    #[test]
    fn varints() {
        for n in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            assert_eq!(b.len(), varint_len(n), "{n}");
        }
    }
}
