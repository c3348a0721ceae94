//! MQTT 3.1.1 over WebSocket (subprotocol `mqtt`), QoS 0: CONNECT, CONNACK, SUBSCRIBE, SUBACK,
//! then every PUBLISH's payload is a message. Packets may span or share WebSocket frames. With a
//! token (Herald) the client connects on `/mqtt/{project}` with the token as CONNECT password;
//! without one (mosquitto) on `/`, anonymously. The packet helpers also serve the harness's MQTT
//! publisher over plain TCP.

use super::codec::{Codec, Event, Hello};
use super::{End, frame};
use crate::payload::now_ns;

/// CONNECT sent, waiting for CONNACK.
const CONNACK: u8 = 0;
/// SUBSCRIBE sent, waiting for SUBACK.
const SUBACK: u8 = 1;
/// Ready.
const LIVE: u8 = 2;

/// An MQTT 3.1.1 subscriber.
#[derive(Debug, Default)]
pub struct Mqtt {
    state: u8,
    /// The topic to subscribe to once connected (then dropped).
    topic: Option<Box<str>>,
    /// Bytes of an incomplete packet.
    buf: Vec<u8>,
}

impl Codec for Mqtt {
    const SUBPROTOCOL: Option<&'static str> = Some("mqtt");

    fn path(&self, h: &Hello<'_>) -> String {
        if h.token.is_empty() {
            "/".into()
        } else {
            format!("/mqtt/{}", h.project)
        }
    }

    fn opened(&mut self, h: &Hello<'_>, out: &mut Vec<u8>, _on: &mut impl FnMut(Event<'_>)) {
        self.topic = h.topic.map(Into::into);
        let id = format!("b{}", now_ns());
        let packet = if h.token.is_empty() {
            connect(&id)
        } else {
            connect_with(&id, Some((h.project, h.token)))
        };
        frame::push(out, frame::BINARY, &packet);
    }

    fn data(
        &mut self,
        p: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        self.buf.extend_from_slice(p);
        let mut used = 0;
        while let Some((kind, start, end)) = split(&self.buf[used..]) {
            let body = &self.buf[used + start..used + end];
            match (self.state, kind) {
                (CONNACK, 2) => match self.topic.take() {
                    Some(t) => {
                        frame::push(out, frame::BINARY, &subscribe(&t));
                        self.state = SUBACK;
                    }
                    None => {
                        self.state = LIVE;
                        on(Event::Ready);
                    }
                },
                (CONNACK, _) => return Err(End::Protocol("mqtt: no CONNACK")),
                (SUBACK, 9) => {
                    self.state = LIVE;
                    on(Event::Ready);
                }
                (SUBACK, _) => return Err(End::Protocol("mqtt: no SUBACK")),
                (_, 3) if body.len() >= 2 => {
                    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                    on(Event::Message(body.get(2 + tl..).unwrap_or_default()));
                }
                _ => {}
            }
            used += end;
        }
        self.buf.drain(..used);
        Ok(())
    }
}

/// MQTT remaining-length encoding.
fn put_len(mut n: usize, out: &mut Vec<u8>) {
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
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT, clean session, keep-alive 300 s.
pub fn connect(client_id: &str) -> Vec<u8> {
    connect_with(client_id, None)
}

/// CONNECT, clean session, keep-alive 300 s, with a user name and password when given.
pub fn connect_with(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str("MQTT", &mut body);
    let flags = if login.is_some() {
        0x02 | 0x80 | 0x40
    } else {
        0x02
    };
    body.extend_from_slice(&[4, flags, 0x01, 0x2c]);
    put_str(client_id, &mut body);
    if let Some((user, password)) = login {
        put_str(user, &mut body);
        put_str(password, &mut body);
    }
    let mut p = vec![0x10];
    put_len(body.len(), &mut p);
    p.extend(body);
    p
}

/// SUBSCRIBE to `topic` at QoS 0 (packet id 1).
fn subscribe(topic: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    put_str(topic, &mut body);
    body.push(0);
    let mut p = vec![0x82];
    put_len(body.len(), &mut p);
    p.extend(body);
    p
}

/// PUBLISH, QoS 0.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x30];
    put_len(2 + topic.len() + payload.len(), &mut p);
    put_str(topic, &mut p);
    p.extend_from_slice(payload);
    p
}

/// Splits one packet off the front: (type, body start, body end).
pub fn split(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let kind = *buf.first()? >> 4;
    let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
    loop {
        let b = *buf.get(i)?;
        len += (b & 0x7f) as usize * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    (buf.len() >= i + len).then_some((kind, i, i + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let p = publish("fan", &[7u8; 300]);
        let (kind, s, e) = split(&p).expect("whole packet");
        assert_eq!((kind, e - s), (3, 2 + 3 + 300));
        assert!(split(&p[..p.len() - 1]).is_none());
    }

    #[test]
    fn subscribes_after_connack_and_reads_publishes_across_frames() {
        let mut c = Mqtt::default();
        let (mut out, mut got) = (Vec::new(), Vec::new());
        let mut on = |e: Event<'_>| got.push(format!("{e:?}"));
        let hello = Hello {
            project: "",
            token: "",
            topic: Some("fan"),
        };
        c.opened(&hello, &mut out, &mut on);
        let sent_connect = out.len();
        c.data(&[0x20, 2, 0, 0], &mut out, &mut on)
            .expect("connack");
        assert!(out.len() > sent_connect, "SUBSCRIBE follows CONNACK");
        // SUBACK and half a PUBLISH in one frame, the rest in the next.
        let mut two = vec![0x90, 3, 0, 1, 0];
        let p = publish("fan", b"hello");
        two.extend_from_slice(&p[..4]);
        c.data(&two, &mut out, &mut on).expect("suback");
        c.data(&p[4..], &mut out, &mut on).expect("publish");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "Ready");
        assert!(got[1].contains("[104, 101, 108, 108, 111]"), "{got:?}");
    }

    #[test]
    fn with_a_token_it_logs_in_on_the_projects_path() {
        let c = Mqtt::default();
        let hello = Hello {
            project: "bench",
            token: "tok",
            topic: None,
        };
        assert_eq!(c.path(&hello), "/mqtt/bench");
        let p = connect_with("id", Some(("bench", "tok")));
        let (kind, s, e) = split(&p).expect("whole packet");
        assert_eq!(kind, 1);
        let body = &p[s..e];
        assert_eq!(body[7], 0xc2, "user name, password, clean session");
        assert!(body.ends_with(b"\x00\x05bench\x00\x03tok"), "{body:?}");
        let anonymous = Hello { token: "", ..hello };
        assert_eq!(c.path(&anonymous), "/");
    }
}
