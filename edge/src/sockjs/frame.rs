//! SockJS frames and how each transport carries them.
//!
//! A SockJS frame is text: `o` (open), `h` (heartbeat), `a[..]` (an array of messages, each a
//! JSON string) or `c[code,"reason"]` (close). The codecs write WebSocket frames (the same bytes a
//! WebSocket client of the protocol gets); [`wrap_batch`] turns a batch of them into SockJS frames
//! in the transport's [`Framing`]: a WebSocket text frame, a line of an XHR response, or an
//! EventSource event. Client messages come as a JSON array of strings ([`unwrap`]).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{OP_BINARY, OP_TEXT, header_len, put_header};

/// How a SockJS transport carries a SockJS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `websocket`: one WebSocket text frame per SockJS frame.
    WebSocket,
    /// `xhr_streaming` and `xhr` (polling): the frame and a newline.
    Xhr,
    /// `eventsource`: `data: <frame>\r\n\r\n`, with `%`, CR, LF and NUL percent-escaped (the
    /// client `decodeURI`s every event).
    EventSource,
}

/// The open frame.
pub(crate) const OPEN: &[u8] = b"o";
/// The heartbeat frame.
pub(crate) const HEARTBEAT: &[u8] = b"h";

/// One SockJS frame (`o`, `h`, `a[..]`, `c[..]`) in the transport's framing.
pub(crate) fn framed(framing: Framing, sockjs: &[u8]) -> Bytes {
    match framing {
        Framing::WebSocket => {
            let mut b = BytesMut::with_capacity(header_len(sockjs.len()) + sockjs.len());
            put_header(&mut b, OP_TEXT, sockjs.len());
            b.put_slice(sockjs);
            b.freeze()
        }
        Framing::Xhr => {
            let mut b = BytesMut::with_capacity(sockjs.len() + 1);
            b.put_slice(sockjs);
            b.put_u8(b'\n');
            b.freeze()
        }
        Framing::EventSource => {
            let mut b = BytesMut::with_capacity(sockjs.len() + 10);
            b.put_slice(b"data: ");
            for &c in sockjs {
                match c {
                    b'%' => b.put_slice(b"%25"),
                    b'\r' => b.put_slice(b"%0D"),
                    b'\n' => b.put_slice(b"%0A"),
                    0 => b.put_slice(b"%00"),
                    c => b.put_u8(c),
                }
            }
            b.put_slice(b"\r\n\r\n");
            b.freeze()
        }
    }
}

/// The close frame `c[code,"reason"]`.
pub(crate) fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(16 + reason.len());
    f.extend_from_slice(format!("c[{code},").as_bytes());
    push_quoted(&mut f, reason);
    f.push(b']');
    f
}

/// Turns the WebSocket frames of `frames` (whole frames, a frame possibly in several pieces)
/// into SockJS frames in `framing`: consecutive text and binary frames become one `a[..]` (a
/// binary payload that is not UTF-8 travels with U+FFFD in place of bad bytes: SockJS is text);
/// a ping becomes `h` on HTTP transports and stays a ping on `websocket`, as do other control
/// frames (which HTTP transports drop).
pub(crate) fn wrap_batch(frames: &mut VecDeque<Bytes>, framing: Framing) {
    if frames.is_empty() {
        return;
    }
    // Frames may span pieces: read them from one contiguous copy (SockJS escapes every byte
    // anyway).
    let all: Vec<u8> = if frames.len() == 1 {
        frames[0].to_vec()
    } else {
        let mut v = Vec::with_capacity(frames.iter().map(Bytes::len).sum());
        for f in frames.iter() {
            v.extend_from_slice(f);
        }
        v
    };
    frames.clear();
    let mut array: Vec<u8> = Vec::new();
    let flush = |array: &mut Vec<u8>, frames: &mut VecDeque<Bytes>| {
        if !array.is_empty() {
            array.push(b']');
            frames.push_back(framed(framing, array));
            array.clear();
        }
    };
    let mut at = 0;
    while let Some((opcode, payload, len)) = crate::frame::parse_server(&all[at..]) {
        at += len;
        match opcode {
            OP_TEXT | OP_BINARY | 0 => {
                array.push(if array.is_empty() { b'a' } else { b',' });
                if array.len() == 1 {
                    array.push(b'[');
                }
                match std::str::from_utf8(payload) {
                    Ok(s) => push_quoted(&mut array, s),
                    Err(_) => push_quoted(&mut array, &String::from_utf8_lossy(payload)),
                }
            }
            0x9 => {
                flush(&mut array, frames);
                match framing {
                    Framing::WebSocket => {
                        frames.push_back(Bytes::copy_from_slice(&all[at - len..at]))
                    }
                    _ => frames.push_back(framed(framing, HEARTBEAT)),
                }
            }
            _ => {
                flush(&mut array, frames);
                if framing == Framing::WebSocket {
                    frames.push_back(Bytes::copy_from_slice(&all[at - len..at]));
                }
            }
        }
    }
    flush(&mut array, frames);
}

/// Appends `s` as a JSON string, escaping what SockJS escapes: besides JSON's own, the
/// characters some browsers or proxies mangle (C1 controls, line and paragraph separators,
/// invisible formatting characters, surrogates' neighbours, non-characters).
pub(crate) fn push_quoted(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if needs_escape(c) => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c if c.is_ascii() => out.push(c as u8),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Whether SockJS sends `c` as a `\uXXXX` escape.
fn needs_escape(c: char) -> bool {
    matches!(c as u32,
        0x0000..=0x001f
        | 0x007f..=0x009f
        | 0x00ad
        | 0x0600..=0x0604
        | 0x070f
        | 0x17b4..=0x17b5
        | 0x200c..=0x200f
        | 0x2028..=0x202f
        | 0x2060..=0x206f
        | 0xfeff
        | 0xfff0..=0xffff)
}

/// Why a client's SockJS payload was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    /// Nothing was sent.
    #[error("Payload expected.")]
    Empty,
    /// Not a JSON array of strings (or, on `websocket`, a string).
    #[error("Broken JSON encoding.")]
    Broken,
}

/// A client's SockJS payload (a JSON array of strings; a lone string is accepted too) as one
/// text for the codec: the messages in order, joined (STOMP frames carry their own ends).
/// `Ok(None)`: an empty array.
pub(crate) fn unwrap(payload: &[u8]) -> Result<Option<String>, PayloadError> {
    let trimmed = payload.trim_ascii();
    if trimmed.is_empty() {
        return Err(PayloadError::Empty);
    }
    let messages: Vec<String> = match trimmed[0] {
        b'[' => serde_json::from_slice(trimmed).map_err(|_| PayloadError::Broken)?,
        b'"' => vec![serde_json::from_slice(trimmed).map_err(|_| PayloadError::Broken)?],
        _ => return Err(PayloadError::Broken),
    };
    Ok(match messages.len() {
        0 => None,
        1 => messages.into_iter().next(),
        _ => Some(messages.concat()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ping_frame, text_frame};

    fn batch(frames: &[Bytes], framing: Framing) -> Vec<Bytes> {
        let mut q: VecDeque<Bytes> = frames.iter().cloned().collect();
        wrap_batch(&mut q, framing);
        q.into_iter().collect()
    }

    #[test]
    fn messages_of_a_batch_travel_in_one_array() {
        let out = batch(
            &[text_frame("MESSAGE\n\nhi\0"), text_frame("\n")],
            Framing::Xhr,
        );
        assert_eq!(
            out,
            vec![Bytes::from_static(
                b"a[\"MESSAGE\\n\\nhi\\u0000\",\"\\n\"]\n"
            )]
        );
    }

    #[test]
    fn a_frame_in_pieces_is_read_whole() {
        let f = text_frame(&"x".repeat(300));
        let out = batch(&[f.slice(..3), f.slice(3..)], Framing::WebSocket);
        assert_eq!(out.len(), 1);
        let mut want = b"a[\"".to_vec();
        want.extend(std::iter::repeat_n(b'x', 300));
        want.extend_from_slice(b"\"]");
        assert_eq!(
            &out[0][..],
            &text_frame(std::str::from_utf8(&want).unwrap())[..]
        );
    }

    #[test]
    fn pings_become_heartbeats_over_http_and_stay_pings_on_websocket() {
        let out = batch(
            &[text_frame("a"), ping_frame(), text_frame("b")],
            Framing::Xhr,
        );
        assert_eq!(
            out,
            vec![
                Bytes::from_static(b"a[\"a\"]\n"),
                Bytes::from_static(b"h\n"),
                Bytes::from_static(b"a[\"b\"]\n")
            ]
        );
        let out = batch(&[ping_frame()], Framing::WebSocket);
        assert_eq!(out, vec![ping_frame()]);
    }

    #[test]
    fn eventsource_escapes_what_decode_uri_would_break() {
        let f = framed(Framing::EventSource, b"a[\"100%\"]");
        assert_eq!(&f[..], b"data: a[\"100%25\"]\r\n\r\n");
        assert_eq!(&framed(Framing::EventSource, OPEN)[..], b"data: o\r\n\r\n");
    }

    #[test]
    fn quoting_escapes_what_sockjs_escapes() {
        let mut v = Vec::new();
        push_quoted(&mut v, "a\"\\\u{0}\u{2028}é\u{feff}");
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            "\"a\\\"\\\\\\u0000\\u2028é\\ufeff\""
        );
        let back: String = serde_json::from_slice(&v).unwrap();
        assert_eq!(back, "a\"\\\u{0}\u{2028}é\u{feff}");
    }

    #[test]
    fn close_frames_name_code_and_reason() {
        assert_eq!(close(3000, "Go away!"), b"c[3000,\"Go away!\"]");
    }

    #[test]
    fn client_payloads() {
        assert_eq!(unwrap(b"[\"a\",\"b\"]"), Ok(Some("ab".into())));
        assert_eq!(unwrap(b"\"a\""), Ok(Some("a".into())));
        assert_eq!(unwrap(b"[]"), Ok(None));
        assert_eq!(unwrap(b" "), Err(PayloadError::Empty));
        assert_eq!(unwrap(b"[\"a\""), Err(PayloadError::Broken));
        assert_eq!(unwrap(b"[1]"), Err(PayloadError::Broken));
        assert_eq!(unwrap(b"{}"), Err(PayloadError::Broken));
    }
}
