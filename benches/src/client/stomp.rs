//! STOMP 1.2 over WebSocket (subprotocol `v12.stomp`) as stompjs speaks it to Herald: `CONNECT`
//! with the token as `Authorization: Bearer`, no heart-beats (`0,0`), `CONNECTED`, then (with a
//! topic) `SUBSCRIBE` to `/topic/{project}/{topic}` with a receipt, `RECEIPT`; every `MESSAGE`
//! body is a message. Frames may share a WebSocket message.

use super::codec::{Codec, Event, Hello};
use super::{End, frame};

/// `CONNECT` sent, waiting for `CONNECTED`.
const CONNECTED: u8 = 0;
/// `SUBSCRIBE` sent, waiting for its `RECEIPT`.
const RECEIPT: u8 = 1;
/// Ready.
const LIVE: u8 = 2;

/// A STOMP 1.2 subscriber.
#[derive(Debug, Default)]
pub struct Stomp {
    state: u8,
    /// The destination to subscribe to once connected (then dropped).
    destination: Option<Box<str>>,
}

impl Codec for Stomp {
    const SUBPROTOCOL: Option<&'static str> = Some("v12.stomp");

    fn path(&self, h: &Hello<'_>) -> String {
        format!("/ws/{}", h.project)
    }

    fn opened(&mut self, h: &Hello<'_>, out: &mut Vec<u8>, _on: &mut impl FnMut(Event<'_>)) {
        self.destination = h
            .topic
            .map(|t| format!("/topic/{}/{t}", h.project).into_boxed_str());
        let connect = format!(
            "CONNECT\naccept-version:1.2\nhost:{}\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
            h.project, h.token
        );
        frame::push(out, frame::TEXT, connect.as_bytes());
    }

    fn data(
        &mut self,
        p: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        for f in p.split(|&b| b == 0) {
            // Heart-beat EOLs before (or between) frames.
            let f = trim_eols(f);
            if f.is_empty() {
                continue;
            }
            let command = f.split(|&b| b == b'\n').next().unwrap_or_default();
            match (self.state, command) {
                (_, b"ERROR") => return Err(End::Protocol("stomp: ERROR")),
                (CONNECTED, b"CONNECTED") => match self.destination.take() {
                    Some(d) => {
                        let sub =
                            format!("SUBSCRIBE\nid:0\ndestination:{d}\nack:auto\nreceipt:1\n\n\0");
                        frame::push(out, frame::TEXT, sub.as_bytes());
                        self.state = RECEIPT;
                    }
                    None => {
                        self.state = LIVE;
                        on(Event::Ready);
                    }
                },
                (CONNECTED, _) => return Err(End::Protocol("stomp: no CONNECTED")),
                (RECEIPT, b"RECEIPT") => {
                    self.state = LIVE;
                    on(Event::Ready);
                }
                (_, b"MESSAGE") => {
                    let body = f
                        .windows(2)
                        .position(|w| w == b"\n\n")
                        .map_or(&[][..], |i| &f[i + 2..]);
                    on(Event::Message(body));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn trim_eols(mut f: &[u8]) -> &[u8] {
    while let [b'\n' | b'\r', rest @ ..] = f {
        f = rest;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_with_the_token_subscribes_with_a_receipt_then_reads_messages() {
        let mut c = Stomp::default();
        let (mut out, mut got) = (Vec::new(), Vec::new());
        let mut on = |e: Event<'_>| got.push(format!("{e:?}"));
        let hello = Hello {
            project: "bench",
            token: "tok",
            topic: Some("fan"),
        };
        assert_eq!(c.path(&hello), "/ws/bench");
        c.opened(&hello, &mut out, &mut on);
        assert!(super::super::herald::contains(
            &out,
            b"Authorization:Bearer tok\n"
        ));
        out.clear();
        c.data(b"CONNECTED\nversion:1.2\n\n\0", &mut out, &mut on)
            .expect("connected");
        assert!(super::super::herald::contains(
            &out,
            b"destination:/topic/bench/fan\n"
        ));
        c.data(
            b"\nRECEIPT\nreceipt-id:1\n\n\0MESSAGE\ndestination:/topic/bench/fan\n\nhello\0",
            &mut out,
            &mut on,
        )
        .expect("receipt and a message");
        let e = c
            .data(b"ERROR\nmessage:x\n\n\0", &mut out, &mut on)
            .expect_err("error");
        assert_eq!(e.label(), "stomp: ERROR");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "Ready");
        assert!(got[1].contains("[104, 101, 108, 108, 111]"), "{got:?}");
    }
}
