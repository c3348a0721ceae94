//! One connection's STOMP subscriptions: which templates it receives, on which subscription,
//! and the acknowledgement window of the client acknowledgement modes.
//!
//! # Acknowledgements
//! - `auto` (the default): a message is written and forgotten.
//! - `client-individual`: each `MESSAGE` carries an `ack` header (1.2; 1.0 and 1.1 acknowledge
//!   by `message-id`). At most [`SubLimits::max_inflight`] messages of such subscriptions are
//!   unacknowledged on a connection at once; later ones wait, in order, in the connection (at most
//!   [`SubLimits::max_held_bytes`], beyond which the connection is a slow consumer), and leave as
//!   `ACK`/`NACK` frames free the window. `NACK` drops the message: delivery is at most once, and
//!   nothing is redelivered, neither on this connection nor after a reconnect.
//! - `client`: the same, except that an `ACK`/`NACK` also settles every earlier message of the
//!   same subscription (cumulative, as STOMP defines it).
//!
//! An `ACK`/`NACK` naming no unacknowledged message (already settled, or of a subscription that
//! is gone) is ignored.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::Version;
use super::destination::{Destination, DestinationError, parse_destination};
use super::encode::push_escaped;
use super::message::{Kind, Template, view};
use super::parse::Frame;
use crate::frame::{header_len, put_header};

/// A subscription's acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// `auto`.
    Auto,
    /// `client`: cumulative acknowledgements.
    Client,
    /// `client-individual`.
    ClientIndividual,
}

/// Bounds on one connection's subscriptions.
#[derive(Debug, Clone, Copy)]
pub struct SubLimits {
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Most unacknowledged messages on one connection (client acknowledgement modes).
    pub max_inflight: usize,
    /// Most bytes of messages waiting for the window; beyond, the connection is a slow consumer.
    pub max_held_bytes: usize,
}

impl Default for SubLimits {
    fn default() -> Self {
        SubLimits {
            max_subscriptions: 256,
            max_inflight: 64,
            max_held_bytes: 1 << 20,
        }
    }
}

/// Why a `SUBSCRIBE`, `UNSUBSCRIBE`, `ACK` or `NACK` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubError {
    /// No `id` header (required from 1.1 on).
    #[error("missing id header")]
    MissingId,
    /// `id` longer than 256 bytes, or with control characters.
    #[error("invalid id header (1 to 256 bytes, no control characters)")]
    BadId,
    /// No `destination` header.
    #[error("missing destination header")]
    MissingDestination,
    /// The `id` is already used by a subscription of this connection.
    #[error("subscription id already in use")]
    DuplicateId,
    /// `ack` is not `auto`, `client` or `client-individual`.
    #[error("unknown ack mode (use auto, client or client-individual)")]
    BadAck,
    /// The connection holds [`SubLimits::max_subscriptions`] subscriptions.
    #[error("too many subscriptions on this connection")]
    TooMany,
    /// The destination is refused.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// `ACK`/`NACK` without the header that names the message (`id`; 1.0/1.1 `message-id`).
    #[error("missing the header naming the message")]
    MissingAckId,
}

/// A `SUBSCRIBE` frame, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSub {
    /// The client's id for it.
    pub id: String,
    /// What it receives.
    pub destination: Destination,
    /// How it is acknowledged.
    pub ack: AckMode,
}

/// Reads a `SUBSCRIBE` frame of a connection of `project`.
pub fn read_subscribe(frame: &Frame, version: Version, project: &str) -> Result<NewSub, SubError> {
    let dest = frame
        .header("destination")
        .ok_or(SubError::MissingDestination)?;
    let id = subscription_id(frame, version)?;
    let ack = match frame.header("ack") {
        None | Some("auto") => AckMode::Auto,
        Some("client") => AckMode::Client,
        Some("client-individual") => AckMode::ClientIndividual,
        Some(_) => return Err(SubError::BadAck),
    };
    Ok(NewSub {
        id: id.to_owned(),
        destination: parse_destination(dest, project)?,
        ack,
    })
}

/// The subscription id of a `SUBSCRIBE` or `UNSUBSCRIBE`: `id`, or for 1.0 (where it is
/// optional) the `destination`.
pub fn subscription_id(frame: &Frame, version: Version) -> Result<&str, SubError> {
    let id = match (frame.header("id"), version) {
        (Some(id), _) => id,
        (None, Version::V10) => frame.header("destination").ok_or(SubError::MissingId)?,
        (None, _) => return Err(SubError::MissingId),
    };
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(SubError::BadId);
    }
    Ok(id)
}

struct Sub {
    key: u32,
    id: Box<str>,
    destination: Destination,
    ack: AckMode,
    /// `MESSAGE\nsubscription:<id>\n` (and `destination:/user/queue/<q>\n`), escaped for the
    /// connection's version: the start of every `MESSAGE` on this subscription.
    head: Box<[u8]>,
}

impl Sub {
    fn receives(&self, t: &Template<'_>) -> bool {
        match (&self.destination, t.kind) {
            (Destination::Broadcast, Kind::Broadcast) => true,
            (Destination::Group(g), Kind::Group) => g.as_str() == t.key,
            (Destination::UserQueue(q), Kind::User) => t.key.is_empty() || **q == *t.key,
            _ => false,
        }
    }
}

struct Inflight {
    ack: u64,
    sub: u32,
    message_id: Box<str>,
}

struct Held {
    sub: u32,
    template: Bytes,
}

/// The acknowledgement state, allocated with the first subscription that needs it.
#[derive(Default)]
struct Acks {
    next: u64,
    inflight: VecDeque<Inflight>,
    held: VecDeque<Held>,
    held_bytes: usize,
}

/// The connection read too slowly (or acknowledged too little): close it as a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("messages waiting for acknowledgements exceed the limit")]
pub struct Overflow;

/// One connection's subscriptions.
pub struct Subscriptions {
    version: Version,
    subs: Vec<Sub>,
    next_key: u32,
    acks: Option<Box<Acks>>,
}

impl Subscriptions {
    /// No subscriptions yet, on a connection speaking `version`.
    pub fn new(version: Version) -> Self {
        Subscriptions {
            version,
            subs: Vec::new(),
            next_key: 0,
            acks: None,
        }
    }

    /// The number of subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Checks that `sub` may be added (id unused, within the limit), before the hub is asked.
    pub fn check(&self, sub: &NewSub, limits: &SubLimits) -> Result<(), SubError> {
        if self.subs.iter().any(|s| *s.id == *sub.id) {
            return Err(SubError::DuplicateId);
        }
        if self.subs.len() >= limits.max_subscriptions {
            return Err(SubError::TooMany);
        }
        Ok(())
    }

    /// Adds a subscription (checked with [`Subscriptions::check`]).
    pub fn add(&mut self, sub: NewSub, limits: &SubLimits) -> Result<(), SubError> {
        self.check(&sub, limits)?;
        let mut head = Vec::with_capacity(32 + sub.id.len());
        head.extend_from_slice(b"MESSAGE\nsubscription:");
        push_escaped(&mut head, &sub.id, self.version);
        head.push(b'\n');
        if let Destination::UserQueue(q) = &sub.destination {
            head.extend_from_slice(b"destination:/user/queue/");
            push_escaped(&mut head, q, self.version);
            head.push(b'\n');
        }
        if sub.ack != AckMode::Auto && self.acks.is_none() {
            self.acks = Some(Box::default());
        }
        self.subs.push(Sub {
            key: self.next_key,
            id: sub.id.into(),
            destination: sub.destination,
            ack: sub.ack,
            head: head.into(),
        });
        // Exactly as long as the subscriptions: most connections hold one.
        self.subs.shrink_to_fit();
        self.next_key = self.next_key.wrapping_add(1);
        Ok(())
    }

    /// Removes subscription `id`, its unacknowledged and waiting messages, and releases what the
    /// window then allows into `out`. Returns its destination, `None` when there was none.
    pub fn remove(
        &mut self,
        id: &str,
        out: &mut VecDeque<Bytes>,
        limits: &SubLimits,
    ) -> Option<Destination> {
        let at = self.subs.iter().position(|s| *s.id == *id)?;
        let sub = self.subs.remove(at);
        self.subs.shrink_to_fit();
        if let Some(acks) = &mut self.acks {
            acks.inflight.retain(|i| i.sub != sub.key);
            acks.held.retain(|h| h.sub != sub.key);
            acks.held_bytes = acks.held.iter().map(|h| h.template.len()).sum();
        }
        self.release(out, limits);
        Some(sub.destination)
    }

    /// Whether a subscription still receives group `group` (the hub membership is then kept).
    pub fn has_group(&self, group: &str) -> bool {
        self.subs
            .iter()
            .any(|s| matches!(&s.destination, Destination::Group(g) if g.as_str() == group))
    }

    /// Completes the frames the connection just took from its queue, in place: each template
    /// becomes one `MESSAGE` per subscription that receives it (or none, or waits for the
    /// window); ready frames pass unchanged.
    pub fn render(
        &mut self,
        taken: &mut VecDeque<Bytes>,
        limits: &SubLimits,
    ) -> Result<(), Overflow> {
        for _ in 0..taken.len() {
            let Some(frame) = taken.pop_front() else {
                break;
            };
            match view(&frame) {
                None => taken.push_back(frame),
                Some(t) => self.render_one(&frame, &t, taken, limits)?,
            }
        }
        Ok(())
    }

    fn render_one(
        &mut self,
        frame: &Bytes,
        t: &Template<'_>,
        out: &mut VecDeque<Bytes>,
        limits: &SubLimits,
    ) -> Result<(), Overflow> {
        for sub in self.subs.iter().filter(|s| s.receives(t)) {
            if sub.ack == AckMode::Auto {
                out.push_back(head(sub, t, None));
                out.push_back(t.shared.clone());
                continue;
            }
            let Some(acks) = self.acks.as_deref_mut() else {
                continue;
            };
            if acks.held.is_empty() && acks.inflight.len() < limits.max_inflight {
                deliver(acks, sub, t, out, self.version);
            } else {
                acks.held_bytes += frame.len();
                if acks.held_bytes > limits.max_held_bytes {
                    return Err(Overflow);
                }
                acks.held.push_back(Held {
                    sub: sub.key,
                    template: frame.clone(),
                });
            }
        }
        Ok(())
    }

    /// Moves waiting messages out while the window has room.
    fn release(&mut self, out: &mut VecDeque<Bytes>, limits: &SubLimits) {
        let Some(acks) = self.acks.as_deref_mut() else {
            return;
        };
        while acks.inflight.len() < limits.max_inflight {
            let Some(held) = acks.held.pop_front() else {
                break;
            };
            acks.held_bytes -= held.template.len();
            let (Some(sub), Some(t)) = (
                self.subs.iter().find(|s| s.key == held.sub),
                view(&held.template),
            ) else {
                continue;
            };
            deliver(acks, sub, &t, out, self.version);
        }
    }

    /// Settles the message an `ACK` (or `NACK`: the same here, nothing is redelivered) names,
    /// and releases what the window then allows into `out`. Returns whether it named an
    /// unacknowledged message.
    pub fn ack(
        &mut self,
        frame: &Frame,
        out: &mut VecDeque<Bytes>,
        limits: &SubLimits,
    ) -> Result<bool, SubError> {
        let found = {
            let Some(acks) = self.acks.as_deref() else {
                // Still check the frame, so a broken client learns early.
                ack_key(frame, self.version)?;
                return Ok(false);
            };
            let pos = match ack_key(frame, self.version)? {
                AckKey::Number(n) => n.and_then(|n| acks.inflight.iter().position(|i| i.ack == n)),
                AckKey::MessageId { id, subscription } => acks.inflight.iter().position(|i| {
                    *i.message_id == *id
                        && subscription.is_none_or(|s| {
                            self.subs
                                .iter()
                                .any(|sub| sub.key == i.sub && *sub.id == *s)
                        })
                }),
            };
            pos.map(|p| (p, acks.inflight[p].sub, acks.inflight[p].ack))
        };
        let Some((pos, sub_key, ack_no)) = found else {
            return Ok(false);
        };
        let cumulative = self
            .subs
            .iter()
            .any(|s| s.key == sub_key && s.ack == AckMode::Client);
        if let Some(acks) = self.acks.as_deref_mut() {
            if cumulative {
                acks.inflight.retain(|i| i.sub != sub_key || i.ack > ack_no);
            } else {
                acks.inflight.remove(pos);
            }
        }
        self.release(out, limits);
        Ok(true)
    }

    /// Messages sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.acks.as_ref().map_or(0, |a| a.inflight.len())
    }

    /// Messages waiting for the window.
    pub fn held(&self) -> usize {
        self.acks.as_ref().map_or(0, |a| a.held.len())
    }
}

enum AckKey<'a> {
    /// 1.2: the `id` header, our `ack` number (`None`: not one of ours).
    Number(Option<u64>),
    /// 1.0/1.1: `message-id`, and 1.1's `subscription`.
    MessageId {
        id: &'a str,
        subscription: Option<&'a str>,
    },
}

fn ack_key(frame: &Frame, version: Version) -> Result<AckKey<'_>, SubError> {
    if version == Version::V12 {
        let id = frame.header("id").ok_or(SubError::MissingAckId)?;
        return Ok(AckKey::Number(id.parse().ok()));
    }
    Ok(AckKey::MessageId {
        id: frame.header("message-id").ok_or(SubError::MissingAckId)?,
        subscription: frame.header("subscription"),
    })
}

/// Writes a message of a client-acknowledged subscription and records it as unacknowledged.
fn deliver(
    acks: &mut Acks,
    sub: &Sub,
    t: &Template<'_>,
    out: &mut VecDeque<Bytes>,
    version: Version,
) {
    acks.next += 1;
    let n = acks.next;
    acks.inflight.push_back(Inflight {
        ack: n,
        sub: sub.key,
        message_id: t.message_id.into(),
    });
    out.push_back(head(sub, t, (version == Version::V12).then_some(n)));
    out.push_back(t.shared.clone());
}

/// The per-connection head of a `MESSAGE`: the WebSocket header for the whole frame, the
/// subscription's head and, when acknowledged by number, `ack:<n>`.
fn head(sub: &Sub, t: &Template<'_>, ack: Option<u64>) -> Bytes {
    let mut digits = [0u8; 20];
    let ack_text = ack.map(|n| fmt_u64(n, &mut digits));
    let ack_len = ack_text.map_or(0, |d| 5 + d.len());
    let stomp_len = sub.head.len() + ack_len + t.shared.len();
    let mut buf = BytesMut::with_capacity(header_len(stomp_len) + sub.head.len() + ack_len);
    put_header(&mut buf, t.opcode, stomp_len);
    buf.put_slice(&sub.head);
    if let Some(d) = ack_text {
        buf.put_slice(b"ack:");
        buf.put_slice(d);
        buf.put_u8(b'\n');
    }
    buf.freeze()
}

/// Writes `n` in decimal at the end of `buf`; returns the digits.
fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::stomp::Limits;
    use crate::codec::stomp::encode::tests::unframe;
    use crate::codec::stomp::message::encode;
    use crate::codec::stomp::parse::{Command, Item, parse_one};
    use herald_core::proto::bus::{Envelope, TargetKind};

    fn env(kind: TargetKind, name: &str, event: &str, id: &str, payload: &[u8]) -> Envelope {
        Envelope {
            version: 1,
            project: "demo".into(),
            kind: kind as i32,
            name: name.into(),
            event: event.into(),
            message_id: id.into(),
            payload: payload.to_vec(),
            ..Default::default()
        }
    }

    fn frame(text: &str) -> Frame {
        match parse_one(text.as_bytes(), Version::V12, &Limits::default()) {
            Ok(Some((Item::Frame(f), _))) => f,
            other => panic!("{other:?}"),
        }
    }

    fn subscribe(subs: &mut Subscriptions, id: &str, dest: &str, ack: &str) {
        let f = frame(&format!(
            "SUBSCRIBE\nid:{id}\ndestination:{dest}\nack:{ack}\n\n\0"
        ));
        let new = read_subscribe(&f, subs.version, "demo").expect("valid subscribe");
        subs.add(new, &SubLimits::default()).expect("added");
    }

    /// Joins the rendered pieces into whole WebSocket frames and returns their STOMP text.
    fn messages(out: &VecDeque<Bytes>) -> Vec<String> {
        let mut all = Vec::new();
        let mut i = 0;
        while i < out.len() {
            // A MESSAGE is a head and a shared part; a ready frame is alone.
            let whole = if out[i].starts_with(&[0x81]) || out[i].starts_with(&[0x82]) {
                let mut w = out[i].to_vec();
                let declared = declared_len(&w);
                if declared > w.len() {
                    i += 1;
                    w.extend_from_slice(&out[i]);
                }
                w
            } else {
                panic!("not a frame start");
            };
            all.push(String::from_utf8_lossy(unframe(&whole)).into_owned());
            i += 1;
        }
        all
    }

    fn declared_len(ws: &[u8]) -> usize {
        match ws[1] {
            126 => 4 + usize::from(u16::from_be_bytes([ws[2], ws[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&ws[2..10]);
                10 + u64::from_be_bytes(b) as usize
            }
            n => 2 + usize::from(n),
        }
    }

    fn deliver_one(subs: &mut Subscriptions, e: &Envelope) -> VecDeque<Bytes> {
        let mut q: VecDeque<Bytes> = VecDeque::new();
        q.push_back(encode(e).expect("template"));
        subs.render(&mut q, &SubLimits::default())
            .expect("no overflow");
        q
    }

    #[test]
    fn a_group_message_reaches_each_subscription_of_its_group() {
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "sub-0", "/topic/demo/news", "auto");
        subscribe(&mut subs, "a:b", "/topic/demo/news", "auto");
        subscribe(&mut subs, "sub-2", "/topic/demo/sport", "auto");
        let out = deliver_one(&mut subs, &env(TargetKind::Group, "news", "", "m1", b"{}"));
        let msgs = messages(&out);
        assert_eq!(
            msgs,
            [
                "MESSAGE\nsubscription:sub-0\ndestination:/topic/demo/news\nmessage-id:m1\ncontent-type:application/json\ncontent-length:2\n\n{}\0",
                "MESSAGE\nsubscription:a\\cb\ndestination:/topic/demo/news\nmessage-id:m1\ncontent-type:application/json\ncontent-length:2\n\n{}\0",
            ]
        );
    }

    #[test]
    fn the_payload_is_shared_not_copied() {
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "s", "/topic/demo", "auto");
        let payload = vec![b'7'; 1000];
        let template = encode(&env(TargetKind::Broadcast, "", "", "m", &payload)).expect("t");
        let mut a = VecDeque::from([template.clone()]);
        let mut b = VecDeque::from([template.clone()]);
        subs.render(&mut a, &SubLimits::default()).expect("ok");
        subs.render(&mut b, &SubLimits::default()).expect("ok");
        // Both connections' payload parts point into the template's one allocation.
        let inside = |p: &Bytes| {
            let t = template.as_ptr_range();
            t.contains(&p.as_ptr()) && p.len() > payload.len()
        };
        assert!(inside(&a[1]) && inside(&b[1]));
        assert!(
            a[0].len() < 40,
            "per-connection head is small: {}",
            a[0].len()
        );
        // The WebSocket header covers head and shared part: 4 bytes for this size.
        assert_eq!(a[0][0], 0x81);
        assert_eq!(a[0][1], 126);
        assert_eq!(declared_len(&a[0]), a[0].len() + a[1].len());
    }

    #[test]
    fn ws_header_grows_with_the_subscription_id() {
        // 125 bytes of STOMP fit a 2-byte header; one more id byte needs 4.
        let t = encode(&env(TargetKind::Broadcast, "", "", "m", b"x")).expect("t");
        let shared = view(&t).expect("view").shared.len();
        let fixed = "MESSAGE\nsubscription:\n".len();
        let id = "i".repeat(125 - fixed - shared);
        for (id, header) in [(id.clone(), 2usize), (format!("{id}i"), 4)] {
            let mut subs = Subscriptions::new(Version::V12);
            subscribe(&mut subs, &id, "/topic/demo", "auto");
            let mut q = VecDeque::from([t.clone()]);
            subs.render(&mut q, &SubLimits::default()).expect("ok");
            assert_eq!(q[0].len() - fixed - id.len(), header);
            assert_eq!(declared_len(&q[0]), q[0].len() + q[1].len());
        }
    }

    #[test]
    fn user_messages_follow_the_event_to_the_queue() {
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "o", "/user/queue/orders", "auto");
        subscribe(&mut subs, "c", "/user/queue/chat", "auto");
        let to_orders = deliver_one(
            &mut subs,
            &env(TargetKind::User, "alice", "orders", "m", b"x"),
        );
        let msgs = messages(&to_orders);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].starts_with(
            "MESSAGE\nsubscription:o\ndestination:/user/queue/orders\nmessage-id:m\n"
        ));
        assert!(msgs[0].contains("\nevent:orders\n"));
        // Without an event: every user queue.
        let to_all = deliver_one(&mut subs, &env(TargetKind::User, "alice", "", "m2", b"x"));
        let msgs = messages(&to_all);
        assert_eq!(msgs.len(), 2);
        assert!(msgs[1].starts_with("MESSAGE\nsubscription:c\ndestination:/user/queue/chat\n"));
        // An event no queue has: nothing.
        assert!(
            deliver_one(&mut subs, &env(TargetKind::User, "alice", "x", "m3", b"x")).is_empty()
        );
    }

    #[test]
    fn messages_without_subscription_are_dropped_and_ready_frames_pass() {
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "s", "/topic/demo/news", "auto");
        let mut q = VecDeque::from([
            crate::codec::stomp::encode::heart_beat_frame(),
            encode(&env(TargetKind::Broadcast, "", "", "m", b"x")).expect("t"),
            encode(&env(TargetKind::Group, "other", "", "m", b"x")).expect("t"),
            crate::codec::stomp::encode::receipt(Version::V12, "r"),
        ]);
        subs.render(&mut q, &SubLimits::default()).expect("ok");
        assert_eq!(q.len(), 2);
        assert_eq!(unframe(&q[0]), b"\n");
        assert_eq!(unframe(&q[1]), b"RECEIPT\nreceipt-id:r\n\n\0");
    }

    #[test]
    fn client_individual_bounds_the_window_and_acks_release_in_order() {
        let limits = SubLimits {
            max_inflight: 2,
            ..SubLimits::default()
        };
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "s", "/topic/demo/g", "client-individual");
        subscribe(&mut subs, "a", "/topic/demo/g", "auto");
        let mut q: VecDeque<Bytes> = (1..=4)
            .map(|i| encode(&env(TargetKind::Group, "g", "", &format!("m{i}"), b"x")).expect("t"))
            .collect();
        subs.render(&mut q, &limits).expect("ok");
        let msgs = messages(&q);
        // Auto gets all four; the window lets two through with ack numbers 1 and 2.
        assert_eq!(
            msgs.iter()
                .filter(|m| m.contains("subscription:a\n"))
                .count(),
            4
        );
        let acked: Vec<_> = msgs
            .iter()
            .filter(|m| m.contains("subscription:s\n"))
            .collect();
        assert_eq!(acked.len(), 2);
        assert!(acked[0].contains("\nack:1\ndestination:/topic/demo/g\nmessage-id:m1\n"));
        assert!(acked[1].contains("\nack:2\n") && acked[1].contains("message-id:m2"));
        assert_eq!((subs.inflight(), subs.held()), (2, 2));
        // Acking 2 releases m3 with ack 3; an unknown ack changes nothing.
        let mut out = VecDeque::new();
        assert_eq!(
            subs.ack(&frame("ACK\nid:2\n\n\0"), &mut out, &limits),
            Ok(true)
        );
        let m = messages(&out);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("\nack:3\n") && m[0].contains("message-id:m3"));
        assert_eq!(
            subs.ack(&frame("ACK\nid:2\n\n\0"), &mut out, &limits),
            Ok(false)
        );
        assert_eq!(
            subs.ack(&frame("NACK\nid:zz\n\n\0"), &mut out, &limits),
            Ok(false)
        );
        assert_eq!(
            subs.ack(&frame("ACK\nreceipt:1\n\n\0"), &mut out, &limits),
            Err(SubError::MissingAckId)
        );
        out.clear();
        // NACK settles as well (no redelivery).
        assert_eq!(
            subs.ack(&frame("NACK\nid:1\n\n\0"), &mut out, &limits),
            Ok(true)
        );
        assert!(messages(&out)[0].contains("message-id:m4"));
        assert_eq!((subs.inflight(), subs.held()), (2, 0));
    }

    #[test]
    fn client_mode_acks_cumulatively() {
        let limits = SubLimits::default();
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "s", "/topic/demo", "client");
        let mut q: VecDeque<Bytes> = (1..=3)
            .map(|i| {
                encode(&env(TargetKind::Broadcast, "", "", &format!("m{i}"), b"x")).expect("t")
            })
            .collect();
        subs.render(&mut q, &limits).expect("ok");
        assert_eq!(subs.inflight(), 3);
        let mut out = VecDeque::new();
        assert_eq!(
            subs.ack(&frame("ACK\nid:2\n\n\0"), &mut out, &limits),
            Ok(true)
        );
        assert_eq!(subs.inflight(), 1);
    }

    #[test]
    fn waiting_messages_are_bounded_and_dropped_with_their_subscription() {
        let limits = SubLimits {
            max_inflight: 1,
            max_held_bytes: 450,
            ..SubLimits::default()
        };
        let mut subs = Subscriptions::new(Version::V12);
        subscribe(&mut subs, "s", "/topic/demo", "client-individual");
        let t = encode(&env(TargetKind::Broadcast, "", "", "m", &[b'x'; 100])).expect("t");
        let mut q = VecDeque::from([t.clone(), t.clone(), t.clone()]);
        subs.render(&mut q, &limits)
            .expect("two wait, within bounds");
        assert_eq!((subs.inflight(), subs.held()), (1, 2));
        let mut q = VecDeque::from([t.clone()]);
        assert_eq!(subs.render(&mut q, &limits), Err(Overflow));
        let mut out = VecDeque::new();
        assert!(subs.remove("s", &mut out, &limits).is_some());
        assert!(out.is_empty());
        assert_eq!((subs.inflight(), subs.held()), (0, 0));
        assert!(subs.remove("s", &mut out, &limits).is_none());
    }

    #[test]
    fn stomp_10_and_11_ack_by_message_id() {
        let limits = SubLimits::default();
        let mut subs = Subscriptions::new(Version::V11);
        let f = frame("SUBSCRIBE\nid:s\ndestination:/topic/demo\nack:client-individual\n\n\0");
        subs.add(
            read_subscribe(&f, Version::V11, "demo").expect("ok"),
            &limits,
        )
        .expect("ok");
        let out = deliver_one(&mut subs, &env(TargetKind::Broadcast, "", "", "m-1", b"x"));
        assert!(
            !messages(&out)[0].contains("\nack:"),
            "no ack header before 1.2"
        );
        let mut out = VecDeque::new();
        let ack = frame("ACK\nmessage-id:m-1\nsubscription:other\n\n\0");
        assert_eq!(subs.ack(&ack, &mut out, &limits), Ok(false));
        let ack = frame("ACK\nmessage-id:m-1\nsubscription:s\n\n\0");
        assert_eq!(subs.ack(&ack, &mut out, &limits), Ok(true));
        // 1.0: the id is optional and defaults to the destination; no escaping.
        let mut subs = Subscriptions::new(Version::V10);
        let f = frame("SUBSCRIBE\ndestination:/topic/demo\n\n\0");
        let new = read_subscribe(&f, Version::V10, "demo").expect("ok");
        assert_eq!(new.id, "/topic/demo");
        subs.add(new, &limits).expect("ok");
        let out = deliver_one(&mut subs, &env(TargetKind::Broadcast, "", "", "m", b"x"));
        assert!(messages(&out)[0].starts_with("MESSAGE\nsubscription:/topic/demo\n"));
    }

    #[test]
    fn subscribe_frames_are_checked() {
        let limits = SubLimits {
            max_subscriptions: 1,
            ..SubLimits::default()
        };
        let read = |t: &str| read_subscribe(&frame(t), Version::V12, "demo");
        assert_eq!(
            read("SUBSCRIBE\nid:1\n\n\0"),
            Err(SubError::MissingDestination)
        );
        assert_eq!(
            read("SUBSCRIBE\ndestination:/topic/demo\n\n\0"),
            Err(SubError::MissingId)
        );
        assert_eq!(
            read("SUBSCRIBE\nid:\\n\ndestination:/topic/demo\n\n\0"),
            Err(SubError::BadId)
        );
        assert_eq!(
            read("SUBSCRIBE\nid:1\ndestination:/topic/demo\nack:sometimes\n\n\0"),
            Err(SubError::BadAck)
        );
        assert_eq!(
            read("SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\0"),
            Err(SubError::Destination(DestinationError::OtherProject))
        );
        let mut subs = Subscriptions::new(Version::V12);
        let ok = read("SUBSCRIBE\nid:1\ndestination:/topic/demo/g\n\n\0").expect("ok");
        subs.add(ok.clone(), &limits).expect("first");
        assert_eq!(subs.check(&ok, &limits), Err(SubError::DuplicateId));
        let other = NewSub {
            id: "2".into(),
            ..ok
        };
        assert_eq!(subs.check(&other, &limits), Err(SubError::TooMany));
        assert!(subs.has_group("g"));
        assert_eq!(
            frame("UNSUBSCRIBE\nid:1\n\n\0").command,
            Command::Unsubscribe
        );
    }
}
