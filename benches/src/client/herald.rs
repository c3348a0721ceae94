//! `herald.v1`: the token in the query; `welcome`, then (with a topic) `subscribe` and its `ack`;
//! every `{"type":"msg",...}` frame is a message.

use super::codec::{Codec, Event, Hello};
use super::{End, frame};

/// Waiting for `welcome`.
const WELCOME: u8 = 0;
/// Subscribed, waiting for the `ack`.
const ACK: u8 = 1;
/// Ready.
const LIVE: u8 = 2;

/// The native protocol's client side.
#[derive(Debug, Default)]
pub struct Herald {
    state: u8,
    /// The group to subscribe to once welcomed (then dropped).
    topic: Option<Box<str>>,
}

impl Codec for Herald {
    fn path(&self, h: &Hello<'_>) -> String {
        format!("/ws/{}?token={}", h.project, h.token)
    }

    fn opened(&mut self, h: &Hello<'_>, _out: &mut Vec<u8>, _on: &mut impl FnMut(Event<'_>)) {
        self.topic = h.topic.map(Into::into);
    }

    fn data(
        &mut self,
        p: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        match self.state {
            WELCOME => {
                if !contains(p, br#""type":"welcome""#) {
                    return Err(End::Refused);
                }
                match self.topic.take() {
                    Some(topic) => {
                        let sub = format!(r#"{{"type":"subscribe","id":1,"group":"{topic}"}}"#);
                        frame::push(out, frame::TEXT, sub.as_bytes());
                        self.state = ACK;
                    }
                    None => {
                        self.state = LIVE;
                        on(Event::Ready);
                    }
                }
            }
            ACK => {
                if !contains(p, br#""ack""#) {
                    return Err(End::Protocol("subscribe refused"));
                }
                self.state = LIVE;
                on(Event::Ready);
            }
            _ => {
                if p.starts_with(br#"{"type":"msg""#) {
                    on(Event::Message(p));
                }
            }
        }
        Ok(())
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(topic: Option<&str>) -> Hello<'_> {
        Hello {
            project: "p",
            token: "t",
            topic,
        }
    }

    #[test]
    fn welcome_subscribe_ack_then_messages() {
        let mut c = Herald::default();
        let (mut out, mut events) = (Vec::new(), Vec::new());
        let mut on = |e: Event<'_>| events.push(format!("{e:?}"));
        c.opened(&hello(Some("g")), &mut out, &mut on);
        c.data(br#"{"type":"welcome","conn_id":"x"}"#, &mut out, &mut on)
            .expect("welcome");
        assert!(contains(
            &out,
            br#"{"type":"subscribe","id":1,"group":"g"}"#
        ));
        c.data(br#"{"type":"ack","id":1}"#, &mut out, &mut on)
            .expect("ack");
        c.data(br#"{"type":"pong"}"#, &mut out, &mut on)
            .expect("other");
        c.data(
            br#"{"type":"msg","kind":"group","data":1}"#,
            &mut out,
            &mut on,
        )
        .expect("msg");
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], "Ready");
        assert!(events[1].starts_with("Message"));
        assert_eq!(c.path(&hello(None)), "/ws/p?token=t");
    }

    #[test]
    fn anything_but_a_welcome_first_is_a_refusal() {
        let mut c = Herald::default();
        let mut out = Vec::new();
        c.opened(&hello(None), &mut out, &mut |_| {});
        let e = c
            .data(br#"{"type":"error","code":4001}"#, &mut out, &mut |_| {})
            .expect_err("refused");
        assert_eq!(e.label(), "no welcome");
    }
}
