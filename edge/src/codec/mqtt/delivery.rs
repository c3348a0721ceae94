//! Delivered messages: encoded once per edge into a template, completed per connection without
//! copying the payload.
//!
//! A message becomes one `PUBLISH` per recipient, and its bytes differ between recipients only
//! by the QoS the recipient subscribed with, its protocol level (5.0 adds a property length) and,
//! at QoS 1, the packet identifier. [`template`] encodes the four possible prefixes (WebSocket
//! header, fixed header, topic) once, side by side with the payload, in one [`Bytes`]; the hub
//! queues that same template to every MQTT recipient. [`Outbound::render`] then turns it into
//! the recipient's frame as slices of the template: QoS 0 over 3.1.1 is one slice, QoS 0 over 5.0
//! two, QoS 1 three (prefix, packet identifier from a static table, payload). The WebSocket
//! header depends only on the total length, so it is shared too. Nothing is copied per
//! recipient but on a resend with DUP (a fresh prefix of a few bytes).
//!
//! [`Outbound`] is also a connection's QoS 1 state: the messages sent and not yet acknowledged
//! (at most the client's receive maximum, capped by Herald's), the ones waiting for room, and the
//! QoS of each subscription.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::proto::bus::{Envelope, TargetKind};

use super::encode::{put_varint, varint_len};
use crate::frame::{OP_BINARY, header_len, put_header};

/// The topic of a project's broadcasts. It starts with `$`, outside every group name.
pub const BROADCAST_TOPIC: &str = "$broadcast";

/// The prefix of a user's own topic, `user/{sub}`.
pub const USER_TOPIC_PREFIX: &str = "user/";

/// The first byte of a template: a WebSocket frame Herald writes never starts with it (that
/// would be a non-final continuation frame), so a template is told apart from ready frames.
const MARKER: u8 = 0x00;

/// Offsets in a template's header.
const KIND: usize = 1;
const TOPIC_LEN: usize = 2;
const LENS: usize = 4;
/// The message's offset (u64) and epoch (u32) in its stream, 0 for a plain target.
const SEQ: usize = 12;
/// The template's header: marker, kind, topic length, the four prefix lengths, offset, epoch.
const HEADER: usize = 24;

/// The prefixes of a template, in order: QoS 1 over 3.1.1, QoS 1 over 5.0, QoS 0 over 5.0,
/// QoS 0 over 3.1.1 (last, so that it runs straight into the payload).
const Q1_V3: usize = 0;
const Q1_V5: usize = 1;
const Q0_V5: usize = 2;
const Q0_V3: usize = 3;

/// Packet identifiers 0 to 65,535 as 3 bytes each (big-endian, then an empty 5.0 property
/// list), so a QoS 1 frame takes its identifier as a static slice: no allocation per message.
static PACKET_IDS: [u8; 3 * 65_536] = {
    let mut t = [0u8; 3 * 65_536];
    let mut i = 0;
    while i < 65_536 {
        t[3 * i] = (i >> 8) as u8;
        t[3 * i + 1] = i as u8;
        i += 1;
    }
    t
};

/// The topic a message is published on.
pub fn topic(env: &Envelope) -> String {
    match env.kind() {
        TargetKind::Group => env.name.clone(),
        TargetKind::User => format!("{USER_TOPIC_PREFIX}{}", env.name),
        _ => BROADCAST_TOPIC.to_owned(),
    }
}

/// Encodes a delivered message once for every MQTT recipient of this edge; see the module docs.
/// The retain flag is 0 and the payload goes as published.
pub fn template(env: &Envelope) -> Bytes {
    let topic = topic(env);
    let payload = &env.payload;
    let prefix_len = |qos: usize, v5: bool| {
        let rest = 2 + topic.len() + 2 * qos + v5 as usize + payload.len();
        let mqtt = 1 + varint_len(rest) + rest;
        // The identifier (and 5.0 property length) of QoS 1 come from the static table.
        header_len(mqtt) + mqtt - payload.len() - if qos == 1 { 2 + v5 as usize } else { 0 }
    };
    let lens = [
        prefix_len(1, false),
        prefix_len(1, true),
        prefix_len(0, true),
        prefix_len(0, false),
    ];
    let mut buf = BytesMut::with_capacity(HEADER + lens.iter().sum::<usize>() + payload.len());
    buf.put_u8(MARKER);
    buf.put_u8(env.kind() as u8);
    buf.put_u16(topic.len() as u16);
    for l in lens {
        buf.put_u16(l as u16);
    }
    buf.put_u64(env.seq);
    buf.put_u32(env.epoch);
    for (qos, v5) in [(1, false), (1, true), (0, true), (0, false)] {
        let rest = 2 + topic.len() + 2 * qos + v5 as usize + payload.len();
        let mqtt = 1 + varint_len(rest) + rest;
        put_header(&mut buf, OP_BINARY, mqtt);
        buf.put_u8(0x30 | ((qos as u8) << 1));
        put_varint(&mut buf, rest);
        buf.put_u16(topic.len() as u16);
        buf.put_slice(topic.as_bytes());
        if qos == 0 && v5 {
            buf.put_u8(0);
        }
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// The finished `PUBLISH` at QoS 0 of a template's message for every client of protocol level
/// `v5` that receives all its messages at QoS 0 with no limit on their size
/// ([`Outbound::all_qos0`]): the hub queues it to each of them as it is, and rendering passes it
/// through. Over 3.1.1 it is a slice of the template (its last prefix runs into the payload);
/// over 5.0 one copy of the message per edge.
pub fn qos0_frame(template: &Bytes, v5: bool) -> Bytes {
    if !is_template(template) {
        return template.clone();
    }
    let p = Parts::of(template);
    if v5 {
        let prefix = &template[p.at[Q0_V5]..p.at[Q0_V5 + 1]];
        let payload = &template[p.at[4]..];
        let mut b = BytesMut::with_capacity(prefix.len() + payload.len());
        b.put_slice(prefix);
        b.put_slice(payload);
        b.freeze()
    } else {
        template.slice(p.at[Q0_V3]..)
    }
}

/// The largest MQTT packet (a remaining length of 268,435,455 and its 5-byte fixed header): a
/// client accepting it accepts every packet.
const MAX_MQTT_PACKET: u32 = 268_435_460;

/// Where a template's message stands in its stream: target kind, topic, offset and epoch;
/// `None` for a message of a plain target (offset 0).
pub fn stream_position(t: &Bytes) -> Option<(TargetKind, &[u8], u64, u32)> {
    if !is_template(t) {
        return None;
    }
    let seq = u64::from_be_bytes(t[SEQ..SEQ + 8].try_into().ok()?);
    let epoch = u32::from_be_bytes(t[SEQ + 8..SEQ + 12].try_into().ok()?);
    if seq == 0 {
        return None;
    }
    let p = Parts::of(t);
    Some((p.kind, p.topic(), seq, epoch))
}

/// Whether a queued frame is a template (to be rendered) rather than a ready frame.
pub fn is_template(frame: &[u8]) -> bool {
    frame.len() >= HEADER && frame[0] == MARKER
}

/// A template's parts, read back from its header.
struct Parts<'a> {
    t: &'a Bytes,
    kind: TargetKind,
    /// Start offsets of the four prefixes, then of the payload.
    at: [usize; 5],
}

impl<'a> Parts<'a> {
    fn of(t: &'a Bytes) -> Self {
        let len = |i: usize| u16::from_be_bytes([t[LENS + 2 * i], t[LENS + 2 * i + 1]]) as usize;
        let mut at = [HEADER; 5];
        for i in 0..4 {
            at[i + 1] = at[i] + len(i);
        }
        Self {
            t,
            kind: TargetKind::try_from(i32::from(t[KIND])).unwrap_or(TargetKind::Unspecified),
            at,
        }
    }

    fn prefix(&self, which: usize) -> Bytes {
        self.t.slice(self.at[which]..self.at[which + 1])
    }

    fn payload(&self) -> Bytes {
        self.t.slice(self.at[4]..)
    }

    /// The topic (the tail of the QoS 0 3.1.1 prefix).
    fn topic(&self) -> &'a [u8] {
        let n = u16::from_be_bytes([self.t[TOPIC_LEN], self.t[TOPIC_LEN + 1]]) as usize;
        &self.t[self.at[4] - n..self.at[4]]
    }

    /// The MQTT packet's size (without the WebSocket header) at `qos` for a client of `v5`.
    fn packet_size(&self, qos: u8, v5: bool) -> usize {
        let which = prefix_index(qos, v5);
        let p = &self.t[self.at[which]..self.at[which + 1]];
        let ws = match p[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let id = if qos == 1 { 2 + v5 as usize } else { 0 };
        p.len() - ws + id + (self.t.len() - self.at[4])
    }
}

fn prefix_index(qos: u8, v5: bool) -> usize {
    match (qos, v5) {
        (0, false) => Q0_V3,
        (0, true) => Q0_V5,
        (_, false) => Q1_V3,
        (_, true) => Q1_V5,
    }
}

/// The QoS a connection receives a kind of message with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not delivered (unsubscribed).
    Off,
    /// QoS 0.
    Qos0,
    /// QoS 1 (QoS 2 is granted as 1).
    Qos1,
}

impl Delivery {
    /// The delivery a subscription asking for `qos` is granted.
    pub fn granted(qos: u8) -> Self {
        if qos == 0 {
            Delivery::Qos0
        } else {
            Delivery::Qos1
        }
    }
}

/// Why a connection's outbound state gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// QoS 1 messages waiting for the client's acknowledgements exceed the byte bound.
    #[error("{bytes} bytes of QoS 1 messages wait for acknowledgements (bound {max})")]
    Waiting {
        /// Bytes waiting.
        bytes: usize,
        /// The bound.
        max: usize,
    },
}

/// What rendering dropped, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Messages of a topic the client unsubscribed from.
    pub unsubscribed: u32,
    /// Messages larger than the client's maximum packet size.
    pub too_large: u32,
}

/// A connection's delivery state: the QoS of each kind of message and the QoS 1 window.
#[derive(Debug)]
pub struct Outbound {
    v5: bool,
    user: Delivery,
    broadcast: Delivery,
    /// Groups subscribed with `SUBSCRIBE` and their QoS, sorted by name. The others the hub
    /// delivers (the token's `groups`) go at QoS 0.
    groups: Vec<(Box<str>, Delivery)>,
    /// The client's maximum packet size (5.0).
    max_packet: u32,
    window: Window,
}

/// The QoS 1 window: its bounds, the last packet identifier, and the messages in it.
#[derive(Debug)]
struct Window {
    max: u16,
    next_id: u16,
    max_waiting_bytes: usize,
    /// Allocated while a QoS 1 message is unacknowledged or waiting, dropped once none is: most
    /// connections never hold one, and an idle one holds nothing.
    queues: Option<Box<Queues>>,
}

/// QoS 1 messages sent and not yet acknowledged, and the ones waiting for room.
#[derive(Debug, Default)]
struct Queues {
    sent: VecDeque<(u16, Bytes)>,
    waiting: VecDeque<Bytes>,
    waiting_bytes: usize,
}

impl Outbound {
    /// The state of a new connection of protocol level `v5`: user messages and broadcasts at
    /// QoS 0 until subscribed otherwise; at most `inflight` QoS 1 messages unacknowledged (the
    /// smaller of the client's receive maximum and Herald's cap); at most `max_waiting_bytes`
    /// of QoS 1 messages waiting beyond those.
    pub fn new(v5: bool, inflight: u16, max_packet: Option<u32>, max_waiting_bytes: usize) -> Self {
        Self {
            v5,
            user: Delivery::Qos0,
            broadcast: Delivery::Qos0,
            groups: Vec::new(),
            max_packet: max_packet.unwrap_or(u32::MAX),
            window: Window {
                max: inflight.max(1),
                next_id: 0,
                max_waiting_bytes,
                queues: None,
            },
        }
    }

    /// Takes over the state of an older connection with the same client id (session present):
    /// its subscriptions and its unacknowledged messages, which [`Outbound::resend`] sends again.
    /// The new connection's protocol level and limits apply.
    pub fn take_over(&mut self, old: Outbound) {
        let max = self.window.max;
        let max_waiting = self.window.max_waiting_bytes;
        let (v5, max_packet) = (self.v5, self.max_packet);
        *self = old;
        self.v5 = v5;
        self.max_packet = max_packet;
        self.window.max = max;
        self.window.max_waiting_bytes = max_waiting;
    }

    /// The QoS the user's own messages go with.
    pub fn set_user(&mut self, d: Delivery) {
        self.user = d;
    }

    /// The QoS broadcasts go with.
    pub fn set_broadcast(&mut self, d: Delivery) {
        self.broadcast = d;
    }

    /// A group subscribed with `SUBSCRIBE` at QoS `d` (`Off`: unsubscribed; the hub stops
    /// delivering it).
    pub fn set_group(&mut self, group: &str, d: Delivery) {
        let at = self.groups.binary_search_by(|(g, _)| (**g).cmp(group));
        match (at, d) {
            (Ok(i), Delivery::Off) => {
                self.groups.remove(i);
            }
            (Ok(i), d) => self.groups[i].1 = d,
            (Err(_), Delivery::Off) => {}
            (Err(i), d) => self.groups.insert(i, (group.into(), d)),
        }
        // Exactly as long as the subscriptions: most connections hold one or two.
        self.groups.shrink_to_fit();
    }

    /// The groups subscribed with `SUBSCRIBE` and their QoS (for a resumed session to join).
    pub fn groups(&self) -> impl Iterator<Item = (&str, Delivery)> {
        self.groups.iter().map(|(g, d)| (&**g, *d))
    }

    /// The QoS of the user's own messages and of broadcasts.
    pub fn user_and_broadcast(&self) -> (Delivery, Delivery) {
        (self.user, self.broadcast)
    }

    /// Whether every message this connection receives goes as the same `PUBLISH` as for any
    /// other client of its protocol level ([`qos0_frame`]): its own messages, broadcasts and every
    /// group at QoS 0, and no maximum packet size below MQTT's own. A connection unsubscribed
    /// from its user topic or from broadcasts is not: rendering drops those.
    pub fn all_qos0(&self) -> bool {
        self.user == Delivery::Qos0
            && self.broadcast == Delivery::Qos0
            && self.max_packet >= MAX_MQTT_PACKET
            && self.groups.iter().all(|(_, d)| *d == Delivery::Qos0)
    }

    /// How many QoS 1 messages wait for an acknowledgement.
    pub fn inflight(&self) -> usize {
        self.window.queues.as_ref().map_or(0, |q| q.sent.len())
    }

    /// The delivery of a template's message on this connection.
    fn delivery(&self, p: &Parts<'_>) -> Delivery {
        match p.kind {
            TargetKind::User => self.user,
            TargetKind::Broadcast => self.broadcast,
            TargetKind::Group => {
                let topic = p.topic();
                match self
                    .groups
                    .binary_search_by(|(g, _)| g.as_bytes().cmp(topic))
                {
                    Ok(i) => self.groups[i].1,
                    Err(_) => Delivery::Qos0,
                }
            }
            TargetKind::Unspecified => Delivery::Off,
        }
    }

    /// Turns the frames just taken from the hub into this connection's frames: templates become
    /// `PUBLISH` packets (QoS 1 ones numbered, or held while the window is full); other frames
    /// pass unchanged. Returns what was dropped.
    pub fn render(&mut self, frames: &mut VecDeque<Bytes>) -> Result<Dropped, Overflow> {
        let mut dropped = Dropped::default();
        if !frames.iter().any(|f| is_template(f)) {
            return Ok(dropped);
        }
        let n = frames.len();
        for _ in 0..n {
            let Some(f) = frames.pop_front() else { break };
            if !is_template(&f) {
                frames.push_back(f);
                continue;
            }
            let p = Parts::of(&f);
            let qos = match self.delivery(&p) {
                Delivery::Off => {
                    dropped.unsubscribed += 1;
                    continue;
                }
                Delivery::Qos0 => 0,
                Delivery::Qos1 => 1,
            };
            if p.packet_size(qos, self.v5) > self.max_packet as usize {
                dropped.too_large += 1;
                continue;
            }
            if qos == 0 {
                push_publish(&p, 0, self.v5, 0, false, frames);
                continue;
            }
            let w = &mut self.window;
            let q = w.queues.get_or_insert_default();
            if q.sent.len() < w.max as usize && q.waiting.is_empty() {
                let id = next_id(&mut w.next_id, &q.sent);
                push_publish(&p, 1, self.v5, id, false, frames);
                q.sent.push_back((id, f));
            } else {
                q.waiting_bytes += f.len();
                q.waiting.push_back(f);
                if q.waiting_bytes > w.max_waiting_bytes {
                    return Err(Overflow::Waiting {
                        bytes: q.waiting_bytes,
                        max: w.max_waiting_bytes,
                    });
                }
            }
        }
        Ok(dropped)
    }

    /// Bytes of QoS 1 messages waiting for room in the window (a replay waits for them).
    pub fn waiting_bytes(&self) -> usize {
        self.window.queues.as_ref().map_or(0, |q| q.waiting_bytes)
    }

    /// The client acknowledged `packet_id`; messages waiting for room go out into `out`.
    /// Returns the acknowledged message's template when the identifier was in flight.
    pub fn acked(&mut self, packet_id: u16, out: &mut VecDeque<Bytes>) -> Option<Bytes> {
        let w = &mut self.window;
        let q = w.queues.as_deref_mut()?;
        let i = q.sent.iter().position(|(id, _)| *id == packet_id)?;
        let (_, acked) = q.sent.remove(i)?;
        while q.sent.len() < w.max as usize {
            let Some(t) = q.waiting.pop_front() else {
                break;
            };
            q.waiting_bytes -= t.len();
            let id = next_id(&mut w.next_id, &q.sent);
            push_publish(&Parts::of(&t), 1, self.v5, id, false, out);
            q.sent.push_back((id, t));
        }
        if q.sent.is_empty() && q.waiting.is_empty() {
            w.queues = None;
        }
        Some(acked)
    }

    /// Sends every unacknowledged message again, with DUP and its packet identifier, into `out`
    /// (after a takeover).
    pub fn resend(&mut self, out: &mut VecDeque<Bytes>) {
        let Some(q) = &self.window.queues else {
            return;
        };
        for (id, t) in &q.sent {
            push_publish(&Parts::of(t), 1, self.v5, *id, true, out);
        }
    }
}

/// The packet identifier after `last` (1 to 65,535) that is not in flight in `sent`.
fn next_id(last: &mut u16, sent: &VecDeque<(u16, Bytes)>) -> u16 {
    loop {
        *last = last.wrapping_add(1).max(1);
        let id = *last;
        if !sent.iter().any(|(s, _)| *s == id) {
            return id;
        }
    }
}

/// Appends the `PUBLISH` of a template at `qos` for a client of `v5` to `out`, as slices.
fn push_publish(p: &Parts<'_>, qos: u8, v5: bool, id: u16, dup: bool, out: &mut VecDeque<Bytes>) {
    let which = prefix_index(qos, v5);
    if qos == 0 {
        if which == Q0_V3 {
            // The last prefix runs straight into the payload: one slice.
            out.push_back(p.t.slice(p.at[Q0_V3]..));
        } else {
            out.push_back(p.prefix(which));
            out.push_back(p.payload());
        }
        return;
    }
    let prefix = p.prefix(which);
    if dup {
        let mut b = BytesMut::from(&prefix[..]);
        let ws = match b[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        b[ws] |= 0x08;
        out.push_back(b.freeze());
    } else {
        out.push_back(prefix);
    }
    let at = 3 * id as usize;
    out.push_back(Bytes::from_static(&PACKET_IDS[at..at + 2 + v5 as usize]));
    out.push_back(p.payload());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::mqtt::packet::Assembler;

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

    /// One PUBLISH as a client reads it.
    #[derive(Debug, PartialEq)]
    struct Got {
        qos: u8,
        dup: bool,
        retain: bool,
        topic: String,
        id: Option<u16>,
        payload: Vec<u8>,
    }

    /// Joins frames, strips the WebSocket headers, and parses the PUBLISH packets in them with
    /// the server-to-client rules (5.0: a property length after the identifier).
    fn read(frames: &VecDeque<Bytes>, v5: bool) -> Vec<Got> {
        let mut wire = Vec::new();
        for f in frames {
            wire.extend_from_slice(f);
        }
        let mut out = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0x82);
            let (len, skip) = match rest[1] {
                126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let packet = &rest[skip..skip + len];
            rest = &rest[skip + len..];
            // The frame holds exactly one packet.
            let mut asm = Assembler::default();
            let mut input = Bytes::copy_from_slice(packet);
            let whole = asm
                .next(&mut input, u32::MAX)
                .expect("valid")
                .expect("complete");
            assert!(input.is_empty(), "one packet per frame");
            let first = whole[0];
            assert_eq!(first >> 4, 3, "a PUBLISH");
            let qos = (first >> 1) & 3;
            let hl = whole.len()
                - crate::codec::mqtt::packet::fixed_header(&whole, u32::MAX)
                    .expect("header")
                    .expect("complete")
                    .remaining;
            let mut b = &whole[hl..];
            let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
            let topic = String::from_utf8(b[2..2 + tl].to_vec()).expect("utf8");
            b = &b[2 + tl..];
            let id = if qos > 0 {
                let id = u16::from_be_bytes([b[0], b[1]]);
                b = &b[2..];
                Some(id)
            } else {
                None
            };
            if v5 {
                assert_eq!(b[0], 0, "no properties");
                b = &b[1..];
            }
            out.push(Got {
                qos,
                dup: first & 0x08 != 0,
                retain: first & 1 != 0,
                topic,
                id,
                payload: b.to_vec(),
            });
        }
        out
    }

    fn render(o: &mut Outbound, templates: &[&Bytes]) -> VecDeque<Bytes> {
        let mut q: VecDeque<Bytes> = templates.iter().map(|t| (*t).clone()).collect();
        o.render(&mut q).expect("no overflow");
        q
    }

    #[test]
    fn topics_by_target() {
        assert_eq!(topic(&env(TargetKind::Group, "news", b"")), "news");
        assert_eq!(topic(&env(TargetKind::User, "alice", b"")), "user/alice");
        assert_eq!(topic(&env(TargetKind::Broadcast, "", b"")), "$broadcast");
    }

    #[test]
    fn qos0_frames_are_slices_of_one_template() {
        let t = template(&env(TargetKind::Group, "news", b"{\"a\":1}"));
        for v5 in [false, true] {
            let mut o = Outbound::new(v5, 10, None, 1 << 20);
            let q = render(&mut o, &[&t]);
            assert_eq!(q.len(), if v5 { 2 } else { 1 });
            for piece in &q {
                let inside = t.as_ptr() as usize..t.as_ptr() as usize + t.len();
                assert!(inside.contains(&(piece.as_ptr() as usize)), "no copy");
            }
            assert_eq!(
                read(&q, v5),
                [Got {
                    qos: 0,
                    dup: false,
                    retain: false,
                    topic: "news".into(),
                    id: None,
                    payload: b"{\"a\":1}".to_vec()
                }]
            );
        }
    }

    #[test]
    fn qos1_frames_are_numbered_without_copying_the_payload() {
        let payload = vec![7u8; 300];
        let t = template(&env(TargetKind::User, "alice", &payload));
        for v5 in [false, true] {
            let mut o = Outbound::new(v5, 10, None, 1 << 20);
            o.set_user(Delivery::Qos1);
            let q = render(&mut o, &[&t, &t]);
            assert_eq!(q.len(), 6);
            assert_eq!(q[2].as_ptr(), t[t.len() - 300..].as_ptr(), "payload shared");
            let got = read(&q, v5);
            assert_eq!(got.len(), 2);
            assert_eq!((got[0].id, got[1].id), (Some(1), Some(2)));
            assert!(got.iter().all(|g| g.qos == 1 && !g.dup && !g.retain));
            assert_eq!(got[0].topic, "user/alice");
            assert_eq!(got[0].payload, payload);
            assert_eq!(o.inflight(), 2);
        }
    }

    #[test]
    fn large_payloads_take_longer_headers() {
        for n in [0usize, 100, 120, 125, 126, 200, 65_000, 70_000] {
            let t = template(&env(TargetKind::Group, "g", &vec![1; n]));
            for (v5, qos) in [(false, 0), (true, 0), (false, 1), (true, 1)] {
                let mut o = Outbound::new(v5, 10, None, 1 << 20);
                o.set_group("g", Delivery::granted(qos));
                let got = read(&render(&mut o, &[&t]), v5);
                assert_eq!(got.len(), 1, "{n} {v5} {qos}");
                assert_eq!(got[0].payload.len(), n);
                assert_eq!(got[0].qos, qos);
            }
        }
    }

    #[test]
    fn window_holds_messages_until_acknowledged() {
        let t = template(&env(TargetKind::Broadcast, "", b"x"));
        let mut o = Outbound::new(false, 2, None, 1 << 20);
        o.set_broadcast(Delivery::Qos1);
        let q = render(&mut o, &[&t, &t, &t, &t]);
        let got = read(&q, false);
        assert_eq!(
            got.iter().map(|g| g.id).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        assert_eq!(got[0].topic, "$broadcast");
        let mut out = VecDeque::new();
        assert!(o.acked(9, &mut out).is_none(), "unknown id");
        assert!(out.is_empty());
        assert!(o.acked(2, &mut out).is_some());
        assert_eq!(read(&out, false)[0].id, Some(3));
        out.clear();
        assert!(o.acked(1, &mut out).is_some());
        assert!(o.acked(3, &mut out).is_some());
        let ids: Vec<_> = read(&out, false).iter().map(|g| g.id).collect();
        assert_eq!(ids, [Some(4)]);
        assert_eq!(o.inflight(), 1);
    }

    #[test]
    fn waiting_messages_are_bounded() {
        let t = template(&env(TargetKind::Broadcast, "", &[0; 100]));
        let mut o = Outbound::new(true, 1, None, 2 * t.len());
        o.set_broadcast(Delivery::Qos1);
        let mut q: VecDeque<Bytes> = [&t, &t, &t].iter().map(|t| (*t).clone()).collect();
        assert!(o.render(&mut q).is_ok());
        let mut q: VecDeque<Bytes> = [&t].iter().map(|t| (*t).clone()).collect();
        assert!(matches!(o.render(&mut q), Err(Overflow::Waiting { .. })));
    }

    #[test]
    fn takeover_resends_with_dup_and_the_same_ids() {
        let t = template(&env(TargetKind::Group, "news", b"hello"));
        let mut old = Outbound::new(false, 5, None, 1 << 20);
        old.set_group("news", Delivery::Qos1);
        let first = read(&render(&mut old, &[&t, &t]), false);
        let mut new = Outbound::new(true, 5, None, 1 << 20);
        new.take_over(old);
        let mut out = VecDeque::new();
        new.resend(&mut out);
        let again = read(&out, true);
        assert_eq!(again.len(), 2);
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.id, b.id);
            assert!(b.dup && !a.dup);
            assert_eq!(b.payload, b"hello");
        }
        assert_eq!(new.groups().collect::<Vec<_>>(), [("news", Delivery::Qos1)]);
        // The template itself is untouched by the DUP copy.
        let q = render(&mut new, &[&t]);
        assert!(!read(&q, true)[0].dup);
    }

    #[test]
    fn subscriptions_decide_what_is_delivered() {
        let user = template(&env(TargetKind::User, "alice", b"u"));
        let all = template(&env(TargetKind::Broadcast, "", b"b"));
        let news = template(&env(TargetKind::Group, "news", b"n"));
        let mut o = Outbound::new(false, 5, None, 1 << 20);
        o.set_user(Delivery::Off);
        o.set_group("news", Delivery::Qos1);
        let mut q: VecDeque<Bytes> = [&user, &all, &news].iter().map(|t| (*t).clone()).collect();
        let dropped = o.render(&mut q).expect("fits");
        assert_eq!(dropped.unsubscribed, 1);
        let got = read(&q, false);
        assert_eq!(
            got.iter()
                .map(|g| (g.topic.as_str(), g.qos))
                .collect::<Vec<_>>(),
            [("$broadcast", 0), ("news", 1)]
        );
        o.set_group("news", Delivery::Qos0);
        assert_eq!(o.groups().collect::<Vec<_>>(), [("news", Delivery::Qos0)]);
        o.set_group("news", Delivery::Off);
        assert_eq!(o.groups().count(), 0);
    }

    #[test]
    fn ready_frames_pass_and_oversized_messages_are_dropped() {
        let big = template(&env(TargetKind::Broadcast, "", &[0; 1000]));
        let small = template(&env(TargetKind::Broadcast, "", &[0; 10]));
        let ping = crate::frame::ping_frame();
        let mut o = Outbound::new(true, 5, Some(100), 1 << 20);
        let mut q: VecDeque<Bytes> = [&ping, &big, &small].iter().map(|t| (*t).clone()).collect();
        let dropped = o.render(&mut q).expect("fits");
        assert_eq!(dropped.too_large, 1);
        assert_eq!(q[0], ping);
        q.pop_front();
        assert_eq!(read(&q, true).len(), 1);
        // The size limit counts the whole MQTT packet: 1 + 1 + (2 + 10 + 1 + 10) = 25 bytes.
        let mut exact = Outbound::new(true, 5, Some(25), 1 << 20);
        let mut q: VecDeque<Bytes> = [&small].iter().map(|t| (*t).clone()).collect();
        assert_eq!(exact.render(&mut q).map(|d| d.too_large), Ok(0));
        let mut under = Outbound::new(true, 5, Some(24), 1 << 20);
        let mut q: VecDeque<Bytes> = [&small].iter().map(|t| (*t).clone()).collect();
        assert_eq!(under.render(&mut q).map(|d| d.too_large), Ok(1));
    }

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let t = template(&env(TargetKind::Broadcast, "", b""));
        let mut o = Outbound::new(false, 3, None, 1 << 20);
        o.set_broadcast(Delivery::Qos1);
        o.window.next_id = 65_534;
        let got = read(&render(&mut o, &[&t, &t, &t]), false);
        let ids: Vec<_> = got.iter().map(|g| g.id).collect();
        assert_eq!(ids, [Some(65_535), Some(1), Some(2)]);
        let mut out = VecDeque::new();
        o.acked(1, &mut out);
        o.window.next_id = 65_535;
        let got = read(&render(&mut o, &[&t]), false);
        assert_eq!(got[0].id, Some(1), "1 is free again, 2 is not");
    }

    #[test]
    fn the_qos0_form_is_what_rendering_makes() {
        for (kind, name) in [
            (TargetKind::Group, "news"),
            (TargetKind::User, "alice"),
            (TargetKind::Broadcast, ""),
        ] {
            for n in [0usize, 10, 120, 126, 200, 70_000] {
                let t = template(&env(kind, name, &vec![3; n]));
                for v5 in [false, true] {
                    let mut o = Outbound::new(v5, 10, None, 1 << 20);
                    assert!(o.all_qos0());
                    let rendered: Vec<u8> = render(&mut o, &[&t])
                        .iter()
                        .flat_map(|b| b.to_vec())
                        .collect();
                    assert_eq!(qos0_frame(&t, v5).to_vec(), rendered, "{kind:?} {n} {v5}");
                }
            }
        }
        // Over 3.1.1 it is the template's own bytes.
        let t = template(&env(TargetKind::Group, "g", b"x"));
        let f = qos0_frame(&t, false);
        let inside = t.as_ptr() as usize..t.as_ptr() as usize + t.len();
        assert!(inside.contains(&(f.as_ptr() as usize)), "no copy");
    }

    #[test]
    fn all_qos0_until_a_subscription_asks_for_more_or_less() {
        let mut o = Outbound::new(false, 10, None, 1 << 20);
        assert!(o.all_qos0());
        o.set_group("news", Delivery::Qos0);
        assert!(o.all_qos0());
        o.set_group("news", Delivery::Qos1);
        assert!(!o.all_qos0(), "numbered per connection");
        o.set_group("news", Delivery::Off);
        assert!(o.all_qos0());
        o.set_user(Delivery::Off);
        assert!(!o.all_qos0(), "dropped by rendering");
        o.set_user(Delivery::Qos0);
        o.set_broadcast(Delivery::Qos1);
        assert!(!o.all_qos0());
        // A maximum packet size is checked per message; MQTT's own maximum needs no check.
        assert!(!Outbound::new(true, 10, Some(1 << 20), 1 << 20).all_qos0());
        assert!(Outbound::new(true, 10, Some(MAX_MQTT_PACKET), 1 << 20).all_qos0());
    }

    #[test]
    fn templates_are_told_from_ready_frames() {
        // A template starts with a byte no frame Herald writes starts with.
        let t = template(&env(TargetKind::Group, "g", b"x"));
        assert!(is_template(&t));
        assert!(!is_template(&crate::frame::ping_frame()));
        assert!(!is_template(&crate::codec::mqtt::encode::pingresp()));
    }
}
