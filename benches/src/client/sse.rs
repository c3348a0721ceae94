//! `herald.v1` over Server-Sent Events: `GET /sse/<project>?token=..&groups=<topic>`. The group
//! is joined by the request itself, so `welcome` means ready; every `msg` event is a message;
//! a heartbeat comment counts as a ping (nothing is answered: the stream is one-way).

use super::End;
use super::codec::{Codec, Event, Hello};
use super::herald::contains;

/// The native protocol's client side over an event stream.
#[derive(Debug, Default)]
pub struct Sse {
    welcomed: bool,
}

impl Codec for Sse {
    const EVENT_STREAM: bool = true;

    fn path(&self, h: &Hello<'_>) -> String {
        match h.topic {
            Some(t) => format!("/sse/{}?token={}&groups={t}", h.project, h.token),
            None => format!("/sse/{}?token={}", h.project, h.token),
        }
    }

    fn opened(&mut self, _h: &Hello<'_>, _out: &mut Vec<u8>, _on: &mut impl FnMut(Event<'_>)) {}

    fn data(
        &mut self,
        p: &[u8],
        _out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End> {
        if !self.welcomed {
            if !contains(p, br#""type":"welcome""#) {
                return Err(End::Refused);
            }
            self.welcomed = true;
            on(Event::Ready);
        } else if p.starts_with(br#"{"type":"msg""#) {
            on(Event::Message(p));
        }
        Ok(())
    }
}

/// One whole event at the front of `buf` (up to its blank line): its first `data:` line's value
/// (`None` for a comment, a heartbeat), whether it is the `close` event, and the bytes it took.
pub fn event(buf: &[u8]) -> Option<(Option<&[u8]>, bool, usize)> {
    let end = super::herald::find(buf, b"\n\n")? + 2;
    let ev = &buf[..end];
    let close = ev.starts_with(b"event: close\n") || contains(ev, b"\nevent: close\n");
    let data = ev
        .split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"data: "));
    Some((data, close, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_heartbeats_and_close() {
        let buf =
            b"data: {\"a\":1}\nid: h1.b:1:2\n\n:\n\nevent: close\ndata: {\"code\":4009}\n\nda";
        let (d, close, n) = event(buf).expect("an event");
        assert_eq!((d, close), (Some(&b"{\"a\":1}"[..]), false));
        let (d, close, m) = event(&buf[n..]).expect("a heartbeat");
        assert_eq!((d, close), (None, false));
        let (d, close, k) = event(&buf[n + m..]).expect("close");
        assert_eq!((d, close), (Some(&b"{\"code\":4009}"[..]), true));
        assert!(
            event(&buf[n + m + k..]).is_none(),
            "an incomplete event waits"
        );
    }
}
