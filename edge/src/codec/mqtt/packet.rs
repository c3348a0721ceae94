//! Client packets: the fixed header, reassembly across WebSocket messages, and parsing of every
//! packet a client may send. Parsing borrows from the packet's bytes: nothing is allocated but a
//! `SUBSCRIBE`'s or `UNSUBSCRIBE`'s list of topic filters. Every malformed input is a typed
//! [`DecodeError`], never a panic.

use bytes::Bytes;
use herald_core::codes::CloseCode;

use super::reason::Reason;

/// The protocol level a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3): spoken like 3.1.1.
    V3_1,
    /// MQTT 3.1.1 (level 4).
    V3_1_1,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Version {
    /// Whether packets carry properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }

    /// A label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Version::V3_1 => "3.1",
            Version::V3_1_1 => "3.1.1",
            Version::V5 => "5.0",
        }
    }
}

/// Packet types (the high nibble of the first byte).
pub mod kind {
    /// `CONNECT`.
    pub const CONNECT: u8 = 1;
    /// `CONNACK`.
    pub const CONNACK: u8 = 2;
    /// `PUBLISH`.
    pub const PUBLISH: u8 = 3;
    /// `PUBACK`.
    pub const PUBACK: u8 = 4;
    /// `PUBREC`.
    pub const PUBREC: u8 = 5;
    /// `PUBREL`.
    pub const PUBREL: u8 = 6;
    /// `PUBCOMP`.
    pub const PUBCOMP: u8 = 7;
    /// `SUBSCRIBE`.
    pub const SUBSCRIBE: u8 = 8;
    /// `SUBACK`.
    pub const SUBACK: u8 = 9;
    /// `UNSUBSCRIBE`.
    pub const UNSUBSCRIBE: u8 = 10;
    /// `UNSUBACK`.
    pub const UNSUBACK: u8 = 11;
    /// `PINGREQ`.
    pub const PINGREQ: u8 = 12;
    /// `PINGRESP`.
    pub const PINGRESP: u8 = 13;
    /// `DISCONNECT`.
    pub const DISCONNECT: u8 = 14;
    /// `AUTH` (5.0).
    pub const AUTH: u8 = 15;
}

/// Why client bytes are not a packet Herald accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length takes more than four bytes.
    #[error("remaining length encoded in more than 4 bytes")]
    RemainingLength,
    /// The packet is larger than the maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    TooLarge {
        /// The packet's size (fixed header included).
        size: u64,
        /// The maximum.
        max: u32,
    },
    /// A field runs past the end of the packet (a truncated variable header or payload).
    #[error("{0} ends before its fields do")]
    Truncated(&'static str),
    /// Bytes are left after the packet's last field.
    #[error("{0} has bytes after its last field")]
    Trailing(&'static str),
    /// A string is not well-formed UTF-8, or holds U+0000.
    #[error("{0}: string is not valid UTF-8")]
    BadUtf8(&'static str),
    /// A topic name or filter of zero length.
    #[error("{0}: zero-length topic")]
    EmptyTopic(&'static str),
    /// The fixed header's flags are not the ones the packet type requires.
    #[error("{0}: wrong fixed-header flags")]
    BadFlags(&'static str),
    /// Another malformed field (reserved bits, QoS 3, an unknown or misplaced property, a
    /// reserved packet type).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A well-formed packet that breaks the protocol's rules (packet identifier 0, no topic
    /// filter, a duplicated property, a server's packet).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The protocol name or level of a `CONNECT` is not MQTT 3.1, 3.1.1 or 5.0.
    #[error("protocol name or level not supported")]
    UnsupportedProtocol,
    /// A `PUBLISH` used a topic alias; Herald allows none.
    #[error("topic aliases are not supported")]
    TopicAlias,
    /// A `SUBSCRIBE` carried a subscription identifier; Herald does not support them.
    #[error("subscription identifiers are not supported")]
    SubscriptionIdentifier,
}

impl DecodeError {
    /// The MQTT 5 reason code that describes the error (in `CONNACK` or `DISCONNECT`).
    pub fn reason(&self) -> Reason {
        match self {
            DecodeError::RemainingLength
            | DecodeError::Truncated(_)
            | DecodeError::Trailing(_)
            | DecodeError::BadUtf8(_)
            | DecodeError::BadFlags(_)
            | DecodeError::Malformed(_) => Reason::MalformedPacket,
            DecodeError::TooLarge { .. } => Reason::PacketTooLarge,
            DecodeError::EmptyTopic(_) | DecodeError::Protocol(_) => Reason::ProtocolError,
            DecodeError::UnsupportedProtocol => Reason::UnsupportedProtocolVersion,
            DecodeError::TopicAlias => Reason::TopicAliasInvalid,
            DecodeError::SubscriptionIdentifier => Reason::SubscriptionIdentifiersNotSupported,
        }
    }

    /// The WebSocket close code that follows: 1009 for a packet too large, 1002 otherwise.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::TooLarge { .. } => CloseCode::MessageTooBig,
            _ => CloseCode::ProtocolError,
        }
    }

    /// A label for metrics (`reason` of `herald_edge_mqtt_malformed_total`).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::RemainingLength => "remaining_length",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Truncated(_) => "truncated",
            DecodeError::Trailing(_) => "trailing",
            DecodeError::BadUtf8(_) => "utf8",
            DecodeError::EmptyTopic(_) => "empty_topic",
            DecodeError::BadFlags(_) => "flags",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Protocol(_) => "protocol",
            DecodeError::UnsupportedProtocol => "unsupported_protocol",
            DecodeError::TopicAlias => "topic_alias",
            DecodeError::SubscriptionIdentifier => "subscription_identifier",
        }
    }
}

/// A packet's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The first byte: type (high nibble) and flags.
    pub first: u8,
    /// The fixed header's length (2 to 5 bytes).
    pub header_len: usize,
    /// The remaining length.
    pub remaining: usize,
}

impl FixedHeader {
    /// The whole packet's length.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the start of `buf`; `Ok(None)` when `buf` is too short to tell.
/// A packet larger than `max_packet` is refused as soon as its header says so.
pub fn fixed_header(buf: &[u8], max_packet: u32) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let h = FixedHeader {
                first,
                header_len: 2 + i,
                remaining,
            };
            let size = h.packet_len() as u64;
            if size > u64::from(max_packet) {
                return Err(DecodeError::TooLarge {
                    size,
                    max: max_packet,
                });
            }
            return Ok(Some(h));
        }
    }
    Err(DecodeError::RemainingLength)
}

/// Cuts a stream of WebSocket messages into MQTT packets: a message may hold several packets and
/// a packet may span messages. Holds no memory between packets that end with their message.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Vec<u8>,
}

impl Assembler {
    /// Takes the next complete packet from the front of `input` (one WebSocket message's bytes).
    /// `Ok(None)` when `input` is used up; a packet it began is kept for the next message.
    pub fn next(
        &mut self,
        input: &mut Bytes,
        max_packet: u32,
    ) -> Result<Option<Bytes>, DecodeError> {
        if self.partial.is_empty() {
            if input.is_empty() {
                return Ok(None);
            }
            if let Some(h) = fixed_header(input, max_packet)?
                && input.len() >= h.packet_len()
            {
                return Ok(Some(input.split_to(h.packet_len())));
            }
        }
        // A packet spanning messages: its header first (at most 5 bytes), then the rest.
        loop {
            match fixed_header(&self.partial, max_packet)? {
                Some(h) => {
                    let need = h.packet_len() - self.partial.len();
                    let take = need.min(input.len());
                    self.partial.extend_from_slice(&input.split_to(take));
                    if take < need {
                        return Ok(None);
                    }
                    return Ok(Some(Bytes::from(std::mem::take(&mut self.partial))));
                }
                None => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    self.partial.extend_from_slice(&input.split_to(1));
                }
            }
        }
    }

    /// Whether part of a packet is waiting for the next message.
    pub fn is_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The first byte of the packet waiting for the next message (its type and flags).
    pub fn partial_first_byte(&self) -> Option<u8> {
        self.partial.first().copied()
    }
}

/// A client packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `CONNECT`.
    Connect(Connect<'a>),
    /// `PUBLISH` (clients may not publish; parsed to answer it properly).
    Publish(Publish<'a>),
    /// `PUBACK`: the client acknowledges a QoS 1 message.
    PubAck(PubAck),
    /// `SUBSCRIBE`.
    Subscribe(Subscribe<'a>),
    /// `UNSUBSCRIBE`.
    Unsubscribe(Unsubscribe<'a>),
    /// `PINGREQ`.
    PingReq,
    /// `DISCONNECT`.
    Disconnect(Disconnect),
    /// A well-formed packet Herald's clients have no reason to send: `PUBREC`, `PUBREL`,
    /// `PUBCOMP` (Herald never sends QoS 2) and `AUTH` (no enhanced authentication). Its name.
    Unexpected(&'static str),
}

/// A `CONNECT` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The protocol level.
    pub version: Version,
    /// Clean session (3.1.1) / clean start (5.0).
    pub clean_start: bool,
    /// Keep alive, seconds; 0: none.
    pub keep_alive: u16,
    /// The client identifier (may be empty).
    pub client_id: &'a str,
    /// The user name.
    pub username: Option<&'a str>,
    /// The password.
    pub password: Option<&'a [u8]>,
    /// The will topic, when the client set a will (never published by Herald).
    pub will_topic: Option<&'a str>,
    /// 5.0 session expiry interval, seconds (0 when absent).
    pub session_expiry: u32,
    /// 5.0 receive maximum: QoS 1 messages the client takes unacknowledged (65,535 when absent).
    pub receive_maximum: u16,
    /// 5.0 maximum packet size the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// 5.0 request problem information (true when absent): reason strings allowed beyond
    /// `CONNACK` and `DISCONNECT`.
    pub request_problem_information: bool,
    /// 5.0 authentication method (enhanced authentication, which Herald does not support).
    pub authentication_method: Option<&'a str>,
}

/// A `PUBLISH` packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// The DUP flag.
    pub dup: bool,
    /// The RETAIN flag.
    pub retain: bool,
    /// The topic name.
    pub topic: &'a str,
    /// The packet identifier (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// The payload.
    pub payload: &'a [u8],
}

/// A `PUBACK` packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// The packet identifier acknowledged.
    pub packet_id: u16,
    /// 5.0 reason code (0 when absent).
    pub reason: u8,
}

/// One topic filter of a `SUBSCRIBE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter<'a> {
    /// The topic filter.
    pub topic: &'a str,
    /// The maximum QoS asked for (0, 1 or 2).
    pub qos: u8,
    /// The whole options byte (5.0: no local, retain as published, retain handling).
    pub options: u8,
}

/// A `SUBSCRIBE` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// The packet identifier.
    pub packet_id: u16,
    /// The topic filters, at least one.
    pub filters: Vec<Filter<'a>>,
}

/// An `UNSUBSCRIBE` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    /// The packet identifier.
    pub packet_id: u16,
    /// The topic filters, at least one.
    pub filters: Vec<&'a str>,
}

/// A `DISCONNECT` packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// 5.0 reason code (0 when absent). 0x04: "disconnect with will message".
    pub reason: u8,
    /// 5.0 session expiry interval, when the client changes it.
    pub session_expiry: Option<u32>,
}

/// The packet type of a complete packet (as [`Assembler::next`] returns it).
pub fn packet_type(packet: &[u8]) -> u8 {
    packet.first().map_or(0, |b| b >> 4)
}

/// Parses one complete packet (as [`Assembler::next`] returns it) of a client that connected
/// with `version` (a `CONNECT` says its own).
pub fn parse(packet: &[u8], version: Version) -> Result<Packet<'_>, DecodeError> {
    let h = fixed_header(packet, u32::MAX)?.ok_or(DecodeError::Truncated("fixed header"))?;
    let body = packet
        .get(h.header_len..h.packet_len())
        .ok_or(DecodeError::Truncated("packet"))?;
    if packet.len() > h.packet_len() {
        return Err(DecodeError::Trailing("packet"));
    }
    let flags = h.first & 0x0f;
    let v5 = version.is_v5();
    let flags_are = |want: u8, name: &'static str| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::BadFlags(name))
        }
    };
    match h.first >> 4 {
        kind::CONNECT => {
            flags_are(0, "CONNECT")?;
            parse_connect(body).map(Packet::Connect)
        }
        kind::PUBLISH => parse_publish(flags, body, v5).map(Packet::Publish),
        kind::PUBACK => {
            flags_are(0, "PUBACK")?;
            parse_puback(body, v5).map(Packet::PubAck)
        }
        kind::SUBSCRIBE => {
            flags_are(0b0010, "SUBSCRIBE")?;
            parse_subscribe(body, v5).map(Packet::Subscribe)
        }
        kind::UNSUBSCRIBE => {
            flags_are(0b0010, "UNSUBSCRIBE")?;
            parse_unsubscribe(body, v5).map(Packet::Unsubscribe)
        }
        kind::PINGREQ => {
            flags_are(0, "PINGREQ")?;
            if !body.is_empty() {
                return Err(DecodeError::Trailing("PINGREQ"));
            }
            Ok(Packet::PingReq)
        }
        kind::DISCONNECT => {
            flags_are(0, "DISCONNECT")?;
            parse_disconnect(body, v5).map(Packet::Disconnect)
        }
        kind::PUBREC => flags_are(0, "PUBREC").map(|()| Packet::Unexpected("PUBREC")),
        kind::PUBREL => flags_are(0b0010, "PUBREL").map(|()| Packet::Unexpected("PUBREL")),
        kind::PUBCOMP => flags_are(0, "PUBCOMP").map(|()| Packet::Unexpected("PUBCOMP")),
        kind::AUTH if v5 => flags_are(0, "AUTH").map(|()| Packet::Unexpected("AUTH")),
        kind::CONNACK | kind::SUBACK | kind::UNSUBACK | kind::PINGRESP => {
            Err(DecodeError::Protocol("a packet only a server sends"))
        }
        _ => Err(DecodeError::Malformed("reserved packet type")),
    }
}

/// Reads fields of one packet, naming the packet in its errors.
struct Cursor<'a> {
    buf: &'a [u8],
    packet: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], packet: &'static str) -> Self {
        Self { buf, packet }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(self.packet));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut v = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.binary()?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::BadUtf8(self.packet))?;
        if s.contains('\0') {
            return Err(DecodeError::BadUtf8(self.packet));
        }
        Ok(s)
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol("packet identifier 0")),
            id => Ok(id),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.packet))
        }
    }
}

/// A property's value.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(&'a str),
    Bin,
    Pair,
}

/// Property identifiers (5.0) Herald reads.
mod prop {
    pub const PAYLOAD_FORMAT: u32 = 0x01;
    pub const MESSAGE_EXPIRY: u32 = 0x02;
    pub const CONTENT_TYPE: u32 = 0x03;
    pub const RESPONSE_TOPIC: u32 = 0x08;
    pub const CORRELATION_DATA: u32 = 0x09;
    pub const SUBSCRIPTION_ID: u32 = 0x0B;
    pub const SESSION_EXPIRY: u32 = 0x11;
    pub const AUTH_METHOD: u32 = 0x15;
    pub const AUTH_DATA: u32 = 0x16;
    pub const REQUEST_PROBLEM: u32 = 0x17;
    pub const WILL_DELAY: u32 = 0x18;
    pub const REQUEST_RESPONSE: u32 = 0x19;
    pub const REASON_STRING: u32 = 0x1F;
    pub const RECEIVE_MAXIMUM: u32 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u32 = 0x22;
    pub const TOPIC_ALIAS: u32 = 0x23;
    pub const USER_PROPERTY: u32 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u32 = 0x27;
}

/// Reads a property list (5.0), calling `on` for each property in `allowed`; any other known or
/// unknown identifier is malformed, and a property given twice (but user properties) a protocol
/// error.
fn properties<'a>(
    c: &mut Cursor<'a>,
    allowed: &[u32],
    mut on: impl FnMut(u32, Value<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = c.varint()? as usize;
    let mut p = Cursor::new(c.bytes(len)?, c.packet);
    let mut seen = 0u64;
    while !p.is_empty() {
        let id = p.varint()?;
        if !allowed.contains(&id) {
            return Err(DecodeError::Malformed(
                "a property not valid in this packet",
            ));
        }
        let value = match id {
            prop::PAYLOAD_FORMAT | prop::REQUEST_PROBLEM | prop::REQUEST_RESPONSE => {
                Value::Byte(p.u8()?)
            }
            prop::RECEIVE_MAXIMUM | prop::TOPIC_ALIAS_MAXIMUM | prop::TOPIC_ALIAS => {
                Value::U16(p.u16()?)
            }
            prop::MESSAGE_EXPIRY
            | prop::SESSION_EXPIRY
            | prop::WILL_DELAY
            | prop::MAXIMUM_PACKET_SIZE => Value::U32(p.u32()?),
            prop::SUBSCRIPTION_ID => Value::Varint(p.varint()?),
            prop::CONTENT_TYPE | prop::RESPONSE_TOPIC | prop::AUTH_METHOD | prop::REASON_STRING => {
                Value::Str(p.string()?)
            }
            prop::CORRELATION_DATA | prop::AUTH_DATA => {
                p.binary()?;
                Value::Bin
            }
            prop::USER_PROPERTY => {
                p.string()?;
                p.string()?;
                Value::Pair
            }
            _ => return Err(DecodeError::Malformed("unknown property")),
        };
        if id != prop::USER_PROPERTY {
            let bit = 1u64 << id;
            if seen & bit != 0 {
                return Err(DecodeError::Protocol("a property given twice"));
            }
            seen |= bit;
        }
        on(id, value)?;
    }
    Ok(())
}

fn parse_connect(body: &[u8]) -> Result<Connect<'_>, DecodeError> {
    let mut c = Cursor::new(body, "CONNECT");
    let name = c.binary()?;
    let level = c.u8()?;
    let version = match (name, level) {
        (b"MQTT", 4) => Version::V3_1_1,
        (b"MQTT", 5) => Version::V5,
        (b"MQIsdp", 3) => Version::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocol),
    };
    let flags = c.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if will_qos == 3 {
        return Err(DecodeError::Malformed("CONNECT will QoS 3"));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "CONNECT will QoS or retain without a will",
        ));
    }
    if has_password && !has_username && !version.is_v5() {
        return Err(DecodeError::Malformed("CONNECT password without user name"));
    }
    let mut connect = Connect {
        version,
        clean_start: flags & 0x02 != 0,
        keep_alive: c.u16()?,
        client_id: "",
        username: None,
        password: None,
        will_topic: None,
        session_expiry: 0,
        receive_maximum: u16::MAX,
        maximum_packet_size: None,
        request_problem_information: true,
        authentication_method: None,
    };
    if version.is_v5() {
        let mut auth_data = false;
        properties(
            &mut c,
            &[
                prop::SESSION_EXPIRY,
                prop::RECEIVE_MAXIMUM,
                prop::MAXIMUM_PACKET_SIZE,
                prop::TOPIC_ALIAS_MAXIMUM,
                prop::REQUEST_RESPONSE,
                prop::REQUEST_PROBLEM,
                prop::USER_PROPERTY,
                prop::AUTH_METHOD,
                prop::AUTH_DATA,
            ],
            |id, v| {
                match (id, v) {
                    (prop::SESSION_EXPIRY, Value::U32(n)) => connect.session_expiry = n,
                    (prop::RECEIVE_MAXIMUM, Value::U16(0)) => {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    (prop::RECEIVE_MAXIMUM, Value::U16(n)) => connect.receive_maximum = n,
                    (prop::MAXIMUM_PACKET_SIZE, Value::U32(0)) => {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    (prop::MAXIMUM_PACKET_SIZE, Value::U32(n)) => {
                        connect.maximum_packet_size = Some(n)
                    }
                    (prop::REQUEST_PROBLEM | prop::REQUEST_RESPONSE, Value::Byte(b)) if b > 1 => {
                        return Err(DecodeError::Protocol("request flag other than 0 or 1"));
                    }
                    (prop::REQUEST_PROBLEM, Value::Byte(b)) => {
                        connect.request_problem_information = b == 1
                    }
                    (prop::AUTH_METHOD, Value::Str(s)) => connect.authentication_method = Some(s),
                    (prop::AUTH_DATA, _) => auth_data = true,
                    _ => {}
                }
                Ok(())
            },
        )?;
        if auth_data && connect.authentication_method.is_none() {
            return Err(DecodeError::Protocol(
                "authentication data without a method",
            ));
        }
    }
    connect.client_id = c.string()?;
    if will {
        if version.is_v5() {
            properties(
                &mut c,
                &[
                    prop::WILL_DELAY,
                    prop::PAYLOAD_FORMAT,
                    prop::MESSAGE_EXPIRY,
                    prop::CONTENT_TYPE,
                    prop::RESPONSE_TOPIC,
                    prop::CORRELATION_DATA,
                    prop::USER_PROPERTY,
                ],
                |_, _| Ok(()),
            )?;
        }
        let topic = c.string()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic("CONNECT will"));
        }
        connect.will_topic = Some(topic);
        c.binary()?;
    }
    if has_username {
        connect.username = Some(c.string()?);
    }
    if has_password {
        connect.password = Some(c.binary()?);
    }
    c.end()?;
    Ok(connect)
}

fn parse_publish(flags: u8, body: &[u8], v5: bool) -> Result<Publish<'_>, DecodeError> {
    let qos = (flags >> 1) & 0x03;
    let dup = flags & 0x08 != 0;
    if qos == 3 {
        return Err(DecodeError::Malformed("PUBLISH QoS 3"));
    }
    if qos == 0 && dup {
        return Err(DecodeError::Malformed("PUBLISH QoS 0 with DUP"));
    }
    let mut c = Cursor::new(body, "PUBLISH");
    let topic = c.string()?;
    let packet_id = if qos > 0 { Some(c.packet_id()?) } else { None };
    if v5 {
        let mut alias = false;
        properties(
            &mut c,
            &[
                prop::PAYLOAD_FORMAT,
                prop::MESSAGE_EXPIRY,
                prop::CONTENT_TYPE,
                prop::RESPONSE_TOPIC,
                prop::CORRELATION_DATA,
                prop::TOPIC_ALIAS,
                prop::USER_PROPERTY,
            ],
            |id, _| {
                alias |= id == prop::TOPIC_ALIAS;
                Ok(())
            },
        )?;
        if alias {
            return Err(DecodeError::TopicAlias);
        }
    }
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopic("PUBLISH"));
    }
    if topic.contains(['+', '#']) {
        return Err(DecodeError::Protocol("PUBLISH topic name holds a wildcard"));
    }
    Ok(Publish {
        qos,
        dup,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload: c.buf,
    })
}

fn parse_puback(body: &[u8], v5: bool) -> Result<PubAck, DecodeError> {
    let mut c = Cursor::new(body, "PUBACK");
    let packet_id = c.packet_id()?;
    let mut reason = 0;
    if v5 && !c.is_empty() {
        reason = c.u8()?;
        if !c.is_empty() {
            properties(
                &mut c,
                &[prop::REASON_STRING, prop::USER_PROPERTY],
                |_, _| Ok(()),
            )?;
        }
    }
    c.end()?;
    Ok(PubAck { packet_id, reason })
}

fn parse_subscribe(body: &[u8], v5: bool) -> Result<Subscribe<'_>, DecodeError> {
    let mut c = Cursor::new(body, "SUBSCRIBE");
    let packet_id = c.packet_id()?;
    if v5 {
        let mut sub_id = false;
        properties(
            &mut c,
            &[prop::SUBSCRIPTION_ID, prop::USER_PROPERTY],
            |id, v| {
                if let (prop::SUBSCRIPTION_ID, Value::Varint(0)) = (id, v) {
                    return Err(DecodeError::Protocol("subscription identifier 0"));
                }
                sub_id |= id == prop::SUBSCRIPTION_ID;
                Ok(())
            },
        )?;
        if sub_id {
            return Err(DecodeError::SubscriptionIdentifier);
        }
    }
    let mut filters = Vec::new();
    while !c.is_empty() {
        let topic = c.string()?;
        let options = c.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if options & reserved != 0 {
            return Err(DecodeError::Malformed(
                "SUBSCRIBE options reserved bits set",
            ));
        }
        if options & 0x03 == 3 {
            return Err(DecodeError::Malformed("SUBSCRIBE QoS 3"));
        }
        if (options >> 4) & 0x03 == 3 {
            return Err(DecodeError::Malformed("SUBSCRIBE retain handling 3"));
        }
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic("SUBSCRIBE"));
        }
        filters.push(Filter {
            topic,
            qos: options & 0x03,
            options,
        });
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { packet_id, filters })
}

fn parse_unsubscribe(body: &[u8], v5: bool) -> Result<Unsubscribe<'_>, DecodeError> {
    let mut c = Cursor::new(body, "UNSUBSCRIBE");
    let packet_id = c.packet_id()?;
    if v5 {
        properties(&mut c, &[prop::USER_PROPERTY], |_, _| Ok(()))?;
    }
    let mut filters = Vec::new();
    while !c.is_empty() {
        let topic = c.string()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic("UNSUBSCRIBE"));
        }
        filters.push(topic);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { packet_id, filters })
}

fn parse_disconnect(body: &[u8], v5: bool) -> Result<Disconnect, DecodeError> {
    let mut c = Cursor::new(body, "DISCONNECT");
    let mut d = Disconnect {
        reason: 0,
        session_expiry: None,
    };
    if v5 && !c.is_empty() {
        d.reason = c.u8()?;
        if !c.is_empty() {
            properties(
                &mut c,
                &[
                    prop::SESSION_EXPIRY,
                    prop::REASON_STRING,
                    prop::USER_PROPERTY,
                ],
                |id, v| {
                    if let (prop::SESSION_EXPIRY, Value::U32(n)) = (id, v) {
                        d.session_expiry = Some(n);
                    }
                    Ok(())
                },
            )?;
        }
    }
    c.end()?;
    Ok(d)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Wraps a body into a packet with `first` byte and a minimal remaining length.
    pub(crate) fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut n = body.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    pub(crate) fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    /// A CONNECT: `level` 4 or 5, client id, optional user name and password, v5 properties.
    pub(crate) fn connect(
        level: u8,
        client_id: &str,
        user: Option<&str>,
        pass: Option<&str>,
        props: &[u8],
    ) -> Vec<u8> {
        let mut body = string(b"MQTT");
        body.push(level);
        let mut flags = 0x02;
        if user.is_some() {
            flags |= 0x80;
        }
        if pass.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        if level == 5 {
            body.push(props.len() as u8);
            body.extend_from_slice(props);
        }
        body.extend(string(client_id.as_bytes()));
        if let Some(u) = user {
            body.extend(string(u.as_bytes()));
        }
        if let Some(p) = pass {
            body.extend(string(p.as_bytes()));
        }
        packet(0x10, &body)
    }

    pub(crate) fn subscribe(v5: bool, id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        if v5 {
            body.push(0);
        }
        for (t, o) in filters {
            body.extend(string(t.as_bytes()));
            body.push(*o);
        }
        packet(0x82, &body)
    }

    fn parse_ok(p: &[u8], v: Version) -> Packet<'_> {
        match parse(p, v) {
            Ok(pkt) => pkt,
            Err(e) => panic!("{e}: {p:02x?}"),
        }
    }

    #[test]
    fn connect_3_1_1_with_token_as_password() {
        let p = connect(4, "dev-1", Some("demo"), Some("eyJ.x.y"), &[]);
        let Packet::Connect(c) = parse_ok(&p, Version::V3_1_1) else {
            panic!("not a connect")
        };
        assert_eq!(c.version, Version::V3_1_1);
        assert_eq!(c.client_id, "dev-1");
        assert_eq!(c.username, Some("demo"));
        assert_eq!(c.password, Some(&b"eyJ.x.y"[..]));
        assert_eq!(c.keep_alive, 60);
        assert!(c.clean_start);
        assert_eq!(c.receive_maximum, u16::MAX);
    }

    #[test]
    fn connect_5_reads_its_properties() {
        // session expiry 300, receive maximum 10, maximum packet size 4096, user property,
        // request problem information 0.
        let mut props = vec![0x11, 0, 0, 1, 44, 0x21, 0, 10, 0x27, 0, 0, 16, 0];
        props.push(0x26);
        props.extend(string(b"k"));
        props.extend(string(b"v"));
        props.extend([0x17, 0]);
        let p = connect(5, "", None, Some("tok"), &props);
        let Packet::Connect(c) = parse_ok(&p, Version::V5) else {
            panic!("not a connect")
        };
        assert_eq!(c.version, Version::V5);
        assert_eq!(c.session_expiry, 300);
        assert_eq!(c.receive_maximum, 10);
        assert_eq!(c.maximum_packet_size, Some(4096));
        assert!(!c.request_problem_information);
        assert_eq!(c.client_id, "");
        assert_eq!(c.username, None, "5.0 allows a password alone");
        assert_eq!(c.password, Some(&b"tok"[..]));
    }

    #[test]
    fn connect_3_1_is_spoken_like_3_1_1() {
        let mut body = string(b"MQIsdp");
        body.extend([3, 0x02, 0, 30]);
        body.extend(string(b"c"));
        let pkt = packet(0x10, &body);
        let Packet::Connect(c) = parse_ok(&pkt, Version::V3_1_1) else {
            panic!("not a connect")
        };
        assert_eq!(c.version, Version::V3_1);
    }

    #[test]
    fn connect_with_a_will_is_read_and_the_will_kept_aside() {
        let mut body = string(b"MQTT");
        body.extend([5, 0x02 | 0x04 | 0x08, 0, 10, 0]);
        body.extend(string(b"cid"));
        body.extend([2, 0x18, 0]); // will properties: a truncated will delay...
        let p = packet(0x10, &body);
        assert_eq!(
            parse(&p, Version::V5),
            Err(DecodeError::Truncated("CONNECT"))
        );
        let mut body = string(b"MQTT");
        body.extend([5, 0x02 | 0x04 | 0x08, 0, 10, 0]);
        body.extend(string(b"cid"));
        body.extend([5, 0x18, 0, 0, 0, 5]);
        body.extend(string(b"status/cid"));
        body.extend(string(b"gone"));
        let pkt = packet(0x10, &body);
        let Packet::Connect(c) = parse_ok(&pkt, Version::V5) else {
            panic!("not a connect")
        };
        assert_eq!(c.will_topic, Some("status/cid"));
    }

    #[test]
    fn unknown_protocols_are_named() {
        for (name, level) in [
            (&b"MQTT"[..], 3u8),
            (b"MQTT", 6),
            (b"MQIsdp", 4),
            (b"HTTP", 4),
        ] {
            let mut body = string(name);
            body.extend([level, 0x02, 0, 10]);
            body.extend(string(b"c"));
            assert_eq!(
                parse(&packet(0x10, &body), Version::V3_1_1),
                Err(DecodeError::UnsupportedProtocol)
            );
        }
        assert_eq!(
            DecodeError::UnsupportedProtocol.reason(),
            Reason::UnsupportedProtocolVersion
        );
    }

    #[test]
    fn connect_flag_rules() {
        let base = |flags: u8| {
            let mut body = string(b"MQTT");
            body.extend([4, flags, 0, 10]);
            body.extend(string(b"c"));
            packet(0x10, &body)
        };
        assert!(matches!(
            parse(&base(0x03), Version::V3_1_1),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse(&base(0x18), Version::V3_1_1),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse(&base(0x20), Version::V3_1_1),
            Err(DecodeError::Malformed(_))
        ));
        // A password without a user name (3.1.1) and its missing field.
        assert!(matches!(
            parse(&base(0x42), Version::V3_1_1),
            Err(DecodeError::Malformed(_))
        ));
        // A user name flag without the field: truncated.
        assert_eq!(
            parse(&base(0x82), Version::V3_1_1),
            Err(DecodeError::Truncated("CONNECT"))
        );
        // Wrong fixed-header flags.
        let mut p = base(0x02);
        p[0] = 0x11;
        assert_eq!(
            parse(&p, Version::V3_1_1),
            Err(DecodeError::BadFlags("CONNECT"))
        );
    }

    #[test]
    fn connect_property_rules() {
        let with =
            |props: &[u8]| parse(&connect(5, "c", None, None, props), Version::V5).map(|_| ());
        assert_eq!(
            with(&[0x21, 0, 0]),
            Err(DecodeError::Protocol("receive maximum 0"))
        );
        assert_eq!(
            with(&[0x27, 0, 0, 0, 0]),
            Err(DecodeError::Protocol("maximum packet size 0"))
        );
        assert_eq!(
            with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
            Err(DecodeError::Protocol("a property given twice"))
        );
        assert!(matches!(
            with(&[0x23, 0, 1]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(with(&[0x7f]), Err(DecodeError::Malformed(_))));
        assert_eq!(with(&[0x11, 0, 0]), Err(DecodeError::Truncated("CONNECT")));
        assert!(matches!(
            with(&[0x16, 0, 1, 9]),
            Err(DecodeError::Protocol(_))
        ));
        let mut m = vec![0x15];
        m.extend(string(b"SCRAM-SHA-1"));
        let p = connect(5, "c", None, None, &m);
        let Ok(Packet::Connect(c)) = parse(&p, Version::V5) else {
            panic!("auth method")
        };
        assert_eq!(c.authentication_method, Some("SCRAM-SHA-1"));
    }

    #[test]
    fn bad_utf8_and_nul_are_refused() {
        for bad in [&b"\xff\xfe"[..], b"a\0b", b"\xed\xa0\x80"] {
            let mut body = string(b"MQTT");
            body.extend([4, 0x02, 0, 10]);
            body.extend(string(bad));
            assert_eq!(
                parse(&packet(0x10, &body), Version::V3_1_1),
                Err(DecodeError::BadUtf8("CONNECT"))
            );
            assert_eq!(
                parse(&subscribe(false, 1, &[]), Version::V3_1_1),
                Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"))
            );
            let mut sub = 1u16.to_be_bytes().to_vec();
            sub.extend(string(bad));
            sub.push(0);
            assert_eq!(
                parse(&packet(0x82, &sub), Version::V3_1_1),
                Err(DecodeError::BadUtf8("SUBSCRIBE"))
            );
        }
    }

    #[test]
    fn subscribe_reads_filters_and_options() {
        let p = subscribe(false, 7, &[("news", 1), ("user/alice", 0), ("x", 2)]);
        let Packet::Subscribe(s) = parse_ok(&p, Version::V3_1_1) else {
            panic!("not a subscribe")
        };
        assert_eq!(s.packet_id, 7);
        let got: Vec<_> = s.filters.iter().map(|f| (f.topic, f.qos)).collect();
        assert_eq!(got, [("news", 1), ("user/alice", 0), ("x", 2)]);
        // 5.0 options: no local, retain as published, retain handling 2.
        let p = subscribe(true, 8, &[("news", 0x2d)]);
        let Packet::Subscribe(s) = parse_ok(&p, Version::V5) else {
            panic!("not a subscribe")
        };
        assert_eq!(s.filters[0].qos, 1);
        assert_eq!(s.filters[0].options, 0x2d);
    }

    #[test]
    fn subscribe_rules() {
        let v3 = |p: Vec<u8>| parse(&p, Version::V3_1_1).map(|_| ());
        let v5 = |p: Vec<u8>| parse(&p, Version::V5).map(|_| ());
        assert_eq!(
            v3(subscribe(false, 0, &[("a", 0)])),
            Err(DecodeError::Protocol("packet identifier 0"))
        );
        assert_eq!(
            v3(subscribe(false, 1, &[("", 0)])),
            Err(DecodeError::EmptyTopic("SUBSCRIBE"))
        );
        assert!(matches!(
            v3(subscribe(false, 1, &[("a", 3)])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            v3(subscribe(false, 1, &[("a", 0x04)])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            v5(subscribe(true, 1, &[("a", 0x30)])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            v5(subscribe(true, 1, &[("a", 0x40)])),
            Err(DecodeError::Malformed(_))
        ));
        // Flags must be 0010.
        let mut p = subscribe(false, 1, &[("a", 0)]);
        p[0] = 0x80;
        assert_eq!(v3(p), Err(DecodeError::BadFlags("SUBSCRIBE")));
        // A filter without its options byte.
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend(string(b"a"));
        assert_eq!(
            v3(packet(0x82, &body)),
            Err(DecodeError::Truncated("SUBSCRIBE"))
        );
        // A subscription identifier.
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend([2, 0x0B, 5]);
        body.extend(string(b"a"));
        body.push(0);
        assert_eq!(
            v5(packet(0x82, &body)),
            Err(DecodeError::SubscriptionIdentifier)
        );
    }

    #[test]
    fn unsubscribe_rules() {
        let mut body = 3u16.to_be_bytes().to_vec();
        body.extend(string(b"news"));
        body.extend(string(b"user/alice"));
        let pkt = packet(0xa2, &body);
        let Packet::Unsubscribe(u) = parse_ok(&pkt, Version::V3_1_1) else {
            panic!("not an unsubscribe")
        };
        assert_eq!(u.packet_id, 3);
        assert_eq!(u.filters, ["news", "user/alice"]);
        let mut v5body = 3u16.to_be_bytes().to_vec();
        v5body.push(0);
        v5body.extend(string(b"news"));
        assert!(parse(&packet(0xa2, &v5body), Version::V5).is_ok());
        assert_eq!(
            parse(&packet(0xa2, &3u16.to_be_bytes()), Version::V3_1_1),
            Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"))
        );
        let mut empty = 3u16.to_be_bytes().to_vec();
        empty.extend(string(b""));
        assert_eq!(
            parse(&packet(0xa2, &empty), Version::V3_1_1),
            Err(DecodeError::EmptyTopic("UNSUBSCRIBE"))
        );
        assert_eq!(
            parse(&packet(0xa0, &body), Version::V3_1_1),
            Err(DecodeError::BadFlags("UNSUBSCRIBE"))
        );
    }

    #[test]
    fn publish_is_read_for_its_answer() {
        let mut body = string(b"up/1");
        body.extend(9u16.to_be_bytes());
        body.extend(b"hi");
        let pkt = packet(0x32, &body);
        let Packet::Publish(p) = parse_ok(&pkt, Version::V3_1_1) else {
            panic!("not a publish")
        };
        assert_eq!((p.qos, p.packet_id, p.payload), (1, Some(9), &b"hi"[..]));
        assert_eq!(
            parse(&packet(0x36, &body), Version::V3_1_1),
            Err(DecodeError::Malformed("PUBLISH QoS 3"))
        );
        assert_eq!(
            parse(&packet(0x38, &body), Version::V3_1_1),
            Err(DecodeError::Malformed("PUBLISH QoS 0 with DUP"))
        );
        let mut empty = string(b"");
        empty.extend(b"x");
        assert_eq!(
            parse(&packet(0x30, &empty), Version::V3_1_1),
            Err(DecodeError::EmptyTopic("PUBLISH"))
        );
        let mut wild = string(b"a/+");
        wild.extend(b"x");
        assert!(matches!(
            parse(&packet(0x30, &wild), Version::V3_1_1),
            Err(DecodeError::Protocol(_))
        ));
        // 5.0: a topic alias.
        let mut alias = string(b"");
        alias.extend([3, 0x23, 0, 1]);
        assert_eq!(
            parse(&packet(0x30, &alias), Version::V5),
            Err(DecodeError::TopicAlias)
        );
        // QoS 1 without its packet identifier.
        assert_eq!(
            parse(&packet(0x32, &string(b"t")), Version::V3_1_1),
            Err(DecodeError::Truncated("PUBLISH"))
        );
    }

    #[test]
    fn small_packets() {
        assert_eq!(parse(&[0xc0, 0], Version::V3_1_1), Ok(Packet::PingReq));
        assert_eq!(
            parse(&[0xc0, 1, 0], Version::V3_1_1),
            Err(DecodeError::Trailing("PINGREQ"))
        );
        assert_eq!(
            parse(&[0xc1, 0], Version::V3_1_1),
            Err(DecodeError::BadFlags("PINGREQ"))
        );
        assert_eq!(
            parse(&[0x40, 2, 0, 5], Version::V3_1_1),
            Ok(Packet::PubAck(PubAck {
                packet_id: 5,
                reason: 0
            }))
        );
        assert_eq!(
            parse(&[0x40, 3, 0, 5, 0x10], Version::V3_1_1),
            Err(DecodeError::Trailing("PUBACK"))
        );
        assert_eq!(
            parse(&[0x40, 4, 0, 5, 0x10, 0], Version::V5),
            Ok(Packet::PubAck(PubAck {
                packet_id: 5,
                reason: 0x10
            }))
        );
        assert_eq!(
            parse(&[0x40, 1, 0], Version::V3_1_1),
            Err(DecodeError::Truncated("PUBACK"))
        );
        assert_eq!(
            parse(&[0xe0, 0], Version::V5),
            Ok(Packet::Disconnect(Disconnect {
                reason: 0,
                session_expiry: None
            }))
        );
        assert_eq!(
            parse(&[0xe0, 7, 0x04, 5, 0x11, 0, 0, 0, 9], Version::V5),
            Ok(Packet::Disconnect(Disconnect {
                reason: 4,
                session_expiry: Some(9)
            }))
        );
        assert_eq!(
            parse(&[0xe0, 1, 0], Version::V3_1_1),
            Err(DecodeError::Trailing("DISCONNECT"))
        );
        assert_eq!(
            parse(&[0x62, 2, 0, 1], Version::V5),
            Ok(Packet::Unexpected("PUBREL"))
        );
        assert_eq!(
            parse(&[0xf0, 0], Version::V5),
            Ok(Packet::Unexpected("AUTH"))
        );
        assert!(matches!(
            parse(&[0xf0, 0], Version::V3_1_1),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse(&[0x00, 0], Version::V3_1_1),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse(&[0x20, 2, 0, 0], Version::V3_1_1),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn remaining_length_limits() {
        assert_eq!(fixed_header(&[0x30], 100), Ok(None));
        assert_eq!(fixed_header(&[0x30, 0x80], 100), Ok(None));
        assert_eq!(
            fixed_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], u32::MAX),
            Err(DecodeError::RemainingLength)
        );
        assert_eq!(
            fixed_header(&[0x30, 0xff, 0xff, 0xff, 0x7f], u32::MAX)
                .ok()
                .flatten()
                .map(|h| h.remaining),
            Some(268_435_455)
        );
        assert_eq!(
            fixed_header(&[0x30, 0x80, 0x01], 100),
            Err(DecodeError::TooLarge {
                size: 131,
                max: 100
            })
        );
        assert_eq!(
            DecodeError::TooLarge { size: 1, max: 0 }.close_code(),
            CloseCode::MessageTooBig
        );
        // A header that claims more than the packet holds.
        assert_eq!(
            parse(&[0xc0, 3, 0], Version::V3_1_1),
            Err(DecodeError::Truncated("packet"))
        );
    }

    #[test]
    fn assembler_cuts_and_joins_packets() {
        let a = connect(4, "a", None, None, &[]);
        let b: &'static [u8] = &[0xc0u8, 0];
        let mut both = a.clone();
        both.extend_from_slice(b);
        let mut asm = Assembler::default();
        let mut input = Bytes::from(both);
        assert_eq!(asm.next(&mut input, 1000), Ok(Some(Bytes::from(a.clone()))));
        assert_eq!(asm.next(&mut input, 1000), Ok(Some(Bytes::from_static(b))));
        assert_eq!(asm.next(&mut input, 1000), Ok(None));
        assert!(!asm.is_partial());
        // Byte by byte.
        let mut got = Vec::new();
        for byte in &a {
            let mut input = Bytes::copy_from_slice(&[*byte]);
            while let Some(p) = asm.next(&mut input, 1000).expect("valid") {
                got.push(p);
            }
        }
        assert_eq!(got, [Bytes::from(a.clone())]);
        assert!(!asm.is_partial());
        // Too large, told by the header of a split packet.
        let mut asm = Assembler::default();
        let mut first = Bytes::from_static(&[0x30, 0x80]);
        assert_eq!(asm.next(&mut first, 100), Ok(None));
        let mut second = Bytes::from_static(&[0x01, 0, 0]);
        assert!(matches!(
            asm.next(&mut second, 100),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

        /// Arbitrary bytes, cut anywhere into messages, never panic the reassembly nor the parser.
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cut in 0usize..600,
            v5 in proptest::bool::ANY,
        ) {
            let version = if v5 { Version::V5 } else { Version::V3_1_1 };
            let cut = cut.min(data.len());
            let mut asm = Assembler::default();
            for part in [&data[..cut], &data[cut..]] {
                let mut input = Bytes::copy_from_slice(part);
                while let Ok(Some(p)) = asm.next(&mut input, 512) {
                    let _ = parse(&p, version);
                }
            }
            let _ = parse(&data, version);
        }

        /// Valid packets with one byte changed, or cut short, never panic the parser.
        #[test]
        fn mutated_packets_never_panic(
            which in 0usize..5,
            at in proptest::num::usize::ANY,
            byte in proptest::num::u8::ANY,
            cut in proptest::num::usize::ANY,
        ) {
            let mut props = vec![0x11, 0, 0, 1, 44, 0x21, 0, 10, 0x26];
            props.extend(string(b"k"));
            props.extend(string(b"v"));
            let mut p = match which {
                0 => connect(4, "client", Some("demo"), Some("token"), &[]),
                1 => connect(5, "client", Some("demo"), Some("token"), &props),
                2 => subscribe(true, 1, &[("news", 1), ("user/a", 0)]),
                3 => subscribe(false, 1, &[("news", 1)]),
                _ => vec![0xe0, 7, 0x04, 5, 0x11, 0, 0, 0, 9],
            };
            let i = at % p.len();
            p[i] = byte;
            p.truncate(cut % (p.len() + 1));
            for version in [Version::V3_1_1, Version::V5] {
                let _ = parse(&p, version);
                let _ = fixed_header(&p, 64);
            }
        }
    }
}
