//! The NATS protocol over WebSocket: `CONNECT`, `SUB`, `PING` at once; ready at the first
//! `PONG`; every `MSG`'s payload is a message; a server `PING` gets a `PONG`. Operations may span
//! or share WebSocket frames.

use anyhow::Context as _;

use super::codec::{Codec, Event, Hello};
use super::{End, frame};

/// A NATS subscriber.
#[derive(Debug, Default)]
pub struct Nats {
    ready: bool,
    /// Bytes of an incomplete operation.
    buf: Vec<u8>,
}

/// One server operation.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Err(&'a str),
}

impl Codec for Nats {
    fn path(&self, _: &Hello<'_>) -> String {
        "/".into()
    }

    fn opened(&mut self, h: &Hello<'_>, out: &mut Vec<u8>, _on: &mut impl FnMut(Event<'_>)) {
        let mut cmd =
            String::from("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n");
        if let Some(t) = h.topic {
            cmd.push_str(&format!("SUB {t} 1\r\n"));
        }
        cmd.push_str("PING\r\n");
        frame::push(out, frame::BINARY, cmd.as_bytes());
    }

    fn data(
        &mut self,
        p: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        self.buf.extend_from_slice(p);
        let mut used = 0;
        loop {
            let (op, n) = match split(&self.buf[used..]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) => return Err(End::Protocol("nats: unreadable operation")),
            };
            match op {
                Op::Msg(m) => on(Event::Message(m)),
                Op::Ping => {
                    frame::push(out, frame::BINARY, b"PONG\r\n");
                    on(Event::Ping);
                }
                Op::Pong if !self.ready => {
                    self.ready = true;
                    on(Event::Ready);
                }
                Op::Pong => {}
                Op::Err(_) => return Err(End::Protocol("nats: -ERR")),
            }
            used += n;
        }
        self.buf.drain(..used);
        Ok(())
    }
}

/// Splits one operation off the front of `buf` (skipping `INFO` and `+OK`): the operation and
/// the bytes it took, or `None` while incomplete.
fn split(buf: &[u8]) -> anyhow::Result<Option<(Op<'_>, usize)>> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol])?;
        let after = eol + 2;
        let op = match line.split_whitespace().next().unwrap_or("") {
            "MSG" => {
                let size: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|s| s.parse().ok())
                    .context("MSG size")?;
                if rest.len() < after + size + 2 {
                    return Ok(None);
                }
                return Ok(Some((
                    Op::Msg(&rest[after..after + size]),
                    at + after + size + 2,
                )));
            }
            "PING" => Op::Ping,
            "PONG" => Op::Pong,
            "-ERR" => Op::Err(line),
            // INFO, +OK
            _ => {
                at += after;
                continue;
            }
        };
        return Ok(Some((op, at + after)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_reads() {
        let buf = b"INFO {}\r\nMSG fan 1 5\r\nhello\r\nPING\r\n";
        let (op, n) = split(buf).expect("ok").expect("msg");
        assert_eq!(op, Op::Msg(b"hello"));
        assert_eq!(split(&buf[n..]).expect("ok").map(|x| x.0), Some(Op::Ping));
        assert!(split(&buf[..20]).expect("ok").is_none());
    }

    #[test]
    fn ready_at_the_first_pong_and_pings_answered() {
        let mut c = Nats::default();
        let (mut out, mut got) = (Vec::new(), Vec::new());
        let mut on = |e: Event<'_>| got.push(format!("{e:?}"));
        c.data(b"INFO {}\r\nPO", &mut out, &mut on).expect("info");
        c.data(b"NG\r\nPING\r\nMSG fan 1 2\r\nhi\r\n", &mut out, &mut on)
            .expect("pong, ping, msg");
        assert_eq!(got[..2], ["Ready", "Ping"]);
        assert!(got[2].starts_with("Message"));
        assert!(super::super::herald::contains(&out, b"PONG\r\n"));
    }
}
