//! The server's own STOMP frames (`CONNECTED`, `RECEIPT`, `ERROR`, heart-beats), each returned
//! as one complete WebSocket text frame ready for the socket. `MESSAGE` frames are built by
//! [`super::message`].

use bytes::{BufMut, Bytes, BytesMut};

use super::Version;
use crate::frame::{OP_TEXT, header_len, put_header};

/// The `server` header of `CONNECTED`.
pub const SERVER: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// A heart-beat from the server: one EOL in a text frame.
pub fn heart_beat_frame() -> Bytes {
    Bytes::from_static(&[0x80 | OP_TEXT, 1, b'\n'])
}

/// Appends a header value escaped as `version` requires on frames other than `CONNECTED`.
/// STOMP 1.0 has no escapes: line breaks (which would end the header) become spaces there.
pub fn push_escaped(out: &mut Vec<u8>, value: &str, version: Version) {
    for b in value.bytes() {
        match (b, version) {
            (b'\n' | b'\r', Version::V10) => out.push(b' '),
            (_, Version::V10) => out.push(b),
            (b'\\', _) => out.extend_from_slice(b"\\\\"),
            (b':', _) => out.extend_from_slice(b"\\c"),
            (b'\n', _) => out.extend_from_slice(b"\\n"),
            (b'\r', Version::V12) => out.extend_from_slice(b"\\r"),
            // 1.1 has no escape for a carriage return; a space keeps the header line intact.
            (b'\r', _) => out.push(b' '),
            _ => out.push(b),
        }
    }
}

/// Wraps STOMP frame bytes (ending with NUL) in one WebSocket text frame.
fn text(stomp: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(stomp.len()) + stomp.len());
    put_header(&mut buf, OP_TEXT, stomp.len());
    buf.put_slice(stomp);
    buf.freeze()
}

/// `CONNECTED`: the version, the server's heart-beat (`can send`, `wants`), the connection id
/// as `session` and the token's `sub` as `user-name`. `CONNECTED` is never escaped; the ids'
/// alphabets need no escaping.
pub fn connected(version: Version, heart_beat: (u32, u32), session: &str, user: &str) -> Bytes {
    let mut f = Vec::with_capacity(96 + session.len() + user.len());
    f.extend_from_slice(b"CONNECTED\nversion:");
    f.extend_from_slice(version.as_str().as_bytes());
    f.extend_from_slice(format!("\nheart-beat:{},{}", heart_beat.0, heart_beat.1).as_bytes());
    f.extend_from_slice(b"\nserver:");
    f.extend_from_slice(SERVER.as_bytes());
    f.extend_from_slice(b"\nsession:");
    f.extend_from_slice(session.as_bytes());
    f.extend_from_slice(b"\nuser-name:");
    f.extend_from_slice(user.as_bytes());
    f.extend_from_slice(b"\n\n\0");
    text(&f)
}

/// `RECEIPT` answering a frame's `receipt` header.
pub fn receipt(version: Version, receipt_id: &str) -> Bytes {
    let mut f = Vec::with_capacity(24 + receipt_id.len());
    f.extend_from_slice(b"RECEIPT\nreceipt-id:");
    push_escaped(&mut f, receipt_id, version);
    f.extend_from_slice(b"\n\n\0");
    text(&f)
}

/// `RECEIPT` of a `SUBSCRIBE` that resumed a stream, sent once its missed messages were: the
/// stream's `epoch` and the last `offset` replayed (absent when history could not be read) and
/// whether every missed message was sent (`recovered`).
pub fn receipt_resumed(
    version: Version,
    receipt_id: &str,
    at: Option<(u32, u64)>,
    recovered: bool,
) -> Bytes {
    let mut f = Vec::with_capacity(80 + receipt_id.len());
    f.extend_from_slice(b"RECEIPT\nreceipt-id:");
    push_escaped(&mut f, receipt_id, version);
    match at {
        Some((epoch, offset)) => {
            f.extend_from_slice(format!("\nepoch:{epoch}\noffset:{offset}").as_bytes())
        }
        None => f.extend_from_slice(b"\nmessage:history unavailable"),
    }
    f.extend_from_slice(format!("\nrecovered:{recovered}\n\n\0").as_bytes());
    text(&f)
}

/// `ERROR` with a `message` header, the offending frame's `receipt` as `receipt-id`, and
/// `detail` as a plain-text body. The connection closes after it.
pub fn error(version: Version, message: &str, receipt_id: Option<&str>, detail: &str) -> Bytes {
    let mut f = Vec::with_capacity(96 + message.len() + detail.len());
    f.extend_from_slice(b"ERROR\nmessage:");
    push_escaped(&mut f, message, version);
    if let Some(r) = receipt_id {
        f.extend_from_slice(b"\nreceipt-id:");
        push_escaped(&mut f, r, version);
    }
    f.extend_from_slice(b"\ncontent-type:text/plain;charset=utf-8\ncontent-length:");
    f.extend_from_slice(detail.len().to_string().as_bytes());
    f.extend_from_slice(b"\n\n");
    f.extend_from_slice(detail.as_bytes());
    f.push(0);
    text(&f)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The STOMP bytes inside one server WebSocket frame (text or binary), checked.
    pub(crate) fn unframe(ws: &[u8]) -> &[u8] {
        assert!(ws[0] == 0x81 || ws[0] == 0x82, "final text or binary frame");
        let (len, skip) = match ws[1] {
            126 => (usize::from(u16::from_be_bytes([ws[2], ws[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&ws[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        assert_eq!(ws.len(), skip + len, "frame length matches the header");
        &ws[skip..]
    }

    #[test]
    fn connected_is_plain() {
        let f = connected(Version::V12, (10000, 10000), "edge-1-7", "alice");
        let s = std::str::from_utf8(unframe(&f)).expect("utf8");
        assert_eq!(
            s,
            format!(
                "CONNECTED\nversion:1.2\nheart-beat:10000,10000\nserver:{SERVER}\nsession:edge-1-7\nuser-name:alice\n\n\0"
            )
        );
    }

    #[test]
    fn receipt_and_error_escape_per_version() {
        let f = receipt(Version::V12, "a:b\\c\r\n");
        assert_eq!(unframe(&f), b"RECEIPT\nreceipt-id:a\\cb\\\\c\\r\\n\n\n\0");
        let f = receipt(Version::V11, "a:b\r");
        assert_eq!(unframe(&f), b"RECEIPT\nreceipt-id:a\\cb \n\n\0");
        let f = receipt(Version::V10, "a:b\n");
        assert_eq!(unframe(&f), b"RECEIPT\nreceipt-id:a:b \n\n\0");
        let f = error(Version::V12, "bad: frame", Some("r1"), "détail");
        assert_eq!(
            unframe(&f),
            "ERROR\nmessage:bad\\c frame\nreceipt-id:r1\ncontent-type:text/plain;charset=utf-8\ncontent-length:7\n\ndétail\0".as_bytes()
        );
    }

    #[test]
    fn heart_beat_is_one_eol() {
        assert_eq!(unframe(&heart_beat_frame()), b"\n");
    }

    #[test]
    fn server_frames_parse_back_with_escapes_undone() {
        use crate::codec::stomp::Limits;
        use crate::codec::stomp::parse::{Item, parse_one};
        // The server frames are not client commands; swap the command to reuse the parser.
        let f = receipt(Version::V12, "x:\\y\n");
        let body = unframe(&f);
        let as_client = [b"ACK".as_slice(), &body[7..]].concat();
        match parse_one(&as_client, Version::V12, &Limits::default()) {
            Ok(Some((Item::Frame(fr), _))) => assert_eq!(fr.header("receipt-id"), Some("x:\\y\n")),
            other => panic!("{other:?}"),
        }
    }
}
