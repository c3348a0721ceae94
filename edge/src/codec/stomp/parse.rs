//! Client frames from the bytes of WebSocket messages.
//!
//! A WebSocket message may carry several frames, heart-beats between them, or a part of a frame
//! (a client splitting large frames): [`Reader`] keeps the unfinished part, bounded by
//! [`Limits::max_frame_bytes`]. Nothing here panics on any input; every refusal is a
//! [`ParseError`] that the connection answers with an `ERROR` frame before closing.

use super::{Limits, Version};

/// A command a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `CONNECT`: the first frame.
    Connect,
    /// `STOMP`: the 1.2 name of `CONNECT`.
    Stomp,
    /// `SEND`: a message from the client (refused by default).
    Send,
    /// `SUBSCRIBE`.
    Subscribe,
    /// `UNSUBSCRIBE`.
    Unsubscribe,
    /// `ACK`.
    Ack,
    /// `NACK` (1.1 and later).
    Nack,
    /// `BEGIN` (transactions are refused).
    Begin,
    /// `COMMIT` (transactions are refused).
    Commit,
    /// `ABORT` (transactions are refused).
    Abort,
    /// `DISCONNECT`.
    Disconnect,
}

impl Command {
    /// The command's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Command> {
        Some(match b {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            _ => return None,
        })
    }

    /// Whether the frame's headers are never escaped (`CONNECT` and `STOMP`).
    fn is_connect(self) -> bool {
        matches!(self, Command::Connect | Command::Stomp)
    }
}

/// One client frame, headers decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// The headers in the order sent, repeated ones included.
    pub headers: Vec<(String, String)>,
    /// The body (up to the NUL, or exactly `content-length` bytes).
    pub body: Vec<u8>,
}

impl Frame {
    /// The value of header `name`; when repeated, the first one (as STOMP 1.2 requires).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Like [`Frame::header`], with the name compared ASCII case-insensitively (for headers a
    /// client may spell either way, such as `Authorization`).
    pub fn header_ignore_case(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An end of line between frames: a heart-beat.
    HeartBeat,
    /// A frame.
    Frame(Frame),
}

/// Why client bytes are not a STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A frame (or its declared `content-length`) exceeds the size limit.
    #[error("frame larger than {0} bytes")]
    TooLarge(usize),
    /// The first line is not a client command.
    #[error("unknown command")]
    UnknownCommand,
    /// A header line has no `:`.
    #[error("header line without a colon")]
    HeaderWithoutColon,
    /// More header lines than allowed.
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    /// A backslash in a header is not one of `\r`, `\n`, `\c`, `\\`.
    #[error("undefined escape sequence in a header")]
    BadEscape,
    /// A command or header is not UTF-8.
    #[error("header is not UTF-8")]
    NotUtf8,
    /// `content-length` is not a decimal number.
    #[error("invalid content-length")]
    BadContentLength,
    /// The `content-length` bytes are not followed by a NUL.
    #[error("body not terminated by NUL after content-length bytes")]
    MissingNul,
    /// A carriage return not followed by a line feed between frames.
    #[error("carriage return without line feed")]
    StrayCarriageReturn,
}

impl ParseError {
    /// Whether the refusal is about size (closed with 1009 rather than 1002).
    pub fn is_too_large(&self) -> bool {
        matches!(self, ParseError::TooLarge(_))
    }
}

/// Parses the item at the start of `input`: `Ok(None)` when more bytes are needed, else the item
/// and the number of bytes it took. `version` decides header unescaping (never for `CONNECT`).
pub fn parse_one(
    input: &[u8],
    version: Version,
    limits: &Limits,
) -> Result<Option<(Item, usize)>, ParseError> {
    match input {
        [] => return Ok(None),
        [b'\n', ..] => return Ok(Some((Item::HeartBeat, 1))),
        [b'\r', b'\n', ..] => return Ok(Some((Item::HeartBeat, 2))),
        [b'\r'] => return Ok(None),
        [b'\r', ..] => return Err(ParseError::StrayCarriageReturn),
        _ => {}
    }
    let max = limits.max_frame_bytes;
    // The command line: short, so an unknown one is refused without waiting for more bytes.
    let window = &input[..input.len().min(max)];
    let Some((cmd_line, mut pos)) = line(window, 0) else {
        return incomplete(input, max, window.len() > 16);
    };
    let command = Command::from_bytes(cmd_line).ok_or(ParseError::UnknownCommand)?;
    let escaped = !command.is_connect() && version.escapes();
    let mut headers = Vec::new();
    loop {
        let Some((raw, next)) = line(window, pos) else {
            return incomplete(input, max, false);
        };
        pos = next;
        if raw.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
        let colon = raw
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::HeaderWithoutColon)?;
        let name = decode(&raw[..colon], escaped)?;
        let value = decode(&raw[colon + 1..], escaped)?;
        headers.push((name, value));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| parse_length(v))
        .transpose()?;
    let (body_end, end) = match length {
        Some(n) => {
            let end = pos
                .checked_add(n)
                .and_then(|e| e.checked_add(1))
                .filter(|&e| e <= max)
                .ok_or(ParseError::TooLarge(max))?;
            if input.len() < end {
                return Ok(None);
            }
            if input[end - 1] != 0 {
                return Err(ParseError::MissingNul);
            }
            (end - 1, end)
        }
        None => match window[pos..].iter().position(|&b| b == 0) {
            Some(i) => (pos + i, pos + i + 1),
            None => return incomplete(input, max, false),
        },
    };
    let body = input[pos..body_end].to_vec();
    Ok(Some((
        Item::Frame(Frame {
            command,
            headers,
            body,
        }),
        end,
    )))
}

/// `Ok(None)` while the frame may still fit; `TooLarge` once `max` bytes did not finish it.
/// `bad_command`: the first line is already too long to be a command.
fn incomplete<T>(input: &[u8], max: usize, bad_command: bool) -> Result<Option<T>, ParseError> {
    if bad_command {
        Err(ParseError::UnknownCommand)
    } else if input.len() >= max {
        Err(ParseError::TooLarge(max))
    } else {
        Ok(None)
    }
}

/// The line starting at `from` without its EOL (LF or CRLF), and where the next line starts.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(from..)?;
    let lf = rest.iter().position(|&b| b == b'\n')?;
    let raw = &rest[..lf];
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    Some((raw, from + lf + 1))
}

fn parse_length(v: &str) -> Result<usize, ParseError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadContentLength);
    }
    // Too many digits for usize is a length beyond any limit.
    Ok(v.parse().unwrap_or(usize::MAX))
}

/// Decodes a header name or value: UTF-8, and the 1.1/1.2 escapes when `escaped`.
fn decode(raw: &[u8], escaped: bool) -> Result<String, ParseError> {
    let s = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
    if !escaped || !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('r') => '\r',
            Some('n') => '\n',
            Some('c') => ':',
            Some('\\') => '\\',
            _ => return Err(ParseError::BadEscape),
        });
    }
    Ok(out)
}

/// Reassembles client frames across WebSocket messages.
#[derive(Debug, Default)]
pub struct Reader {
    /// The unfinished frame the last message ended with (empty, and unallocated, almost always).
    partial: Vec<u8>,
}

impl Reader {
    /// Parses the bytes of one WebSocket message, appending what they finish to `out`. After an
    /// error the connection must close: the reader's state is then meaningless.
    pub fn feed(
        &mut self,
        data: &[u8],
        version: Version,
        limits: &Limits,
        out: &mut Vec<Item>,
    ) -> Result<(), ParseError> {
        if self.partial.is_empty() {
            let used = parse_all(data, version, limits, out)?;
            if used < data.len() {
                self.partial = data[used..].to_vec();
            }
            return Ok(());
        }
        // What is kept is shorter than a frame may be (else parsing refused it), so the joined
        // bytes are bounded by twice the limit, and `parse_one` refuses them if they do not
        // finish the frame within it.
        let mut joined = std::mem::take(&mut self.partial);
        joined.extend_from_slice(data);
        let used = parse_all(&joined, version, limits, out)?;
        if used < joined.len() {
            self.partial = joined[used..].to_vec();
        }
        Ok(())
    }

    /// Bytes held for an unfinished frame.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// Parses every complete item in `data`; returns the bytes used.
fn parse_all(
    data: &[u8],
    version: Version,
    limits: &Limits,
    out: &mut Vec<Item>,
) -> Result<usize, ParseError> {
    let mut used = 0;
    while let Some((item, n)) = parse_one(&data[used..], version, limits)? {
        out.push(item);
        used += n;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_frame_bytes: 4096,
        max_headers: 8,
    };

    fn one(input: &[u8]) -> Result<Option<(Item, usize)>, ParseError> {
        parse_one(input, Version::V12, &L)
    }

    fn frame(input: &[u8]) -> Frame {
        match one(input) {
            Ok(Some((Item::Frame(f), n))) => {
                assert_eq!(n, input.len(), "whole input used");
                f
            }
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn connect_as_stompjs_sends_it() {
        let f = frame(
            b"CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\nAuthorization:Bearer a.b.c\n\n\0",
        );
        assert_eq!(f.command, Command::Connect);
        assert_eq!(f.header("accept-version"), Some("1.2,1.1,1.0"));
        assert_eq!(f.header("heart-beat"), Some("10000,10000"));
        assert_eq!(f.header_ignore_case("authorization"), Some("Bearer a.b.c"));
        assert!(f.body.is_empty());
    }

    #[test]
    fn crlf_and_lf_both_end_lines() {
        let f = frame(b"SUBSCRIBE\r\nid:0\r\ndestination:/topic/p/g\r\n\r\n\0");
        assert_eq!(f.command, Command::Subscribe);
        assert_eq!(f.header("id"), Some("0"));
        assert_eq!(f.header("destination"), Some("/topic/p/g"));
    }

    #[test]
    fn heart_beats_are_eols() {
        assert_eq!(one(b"\n"), Ok(Some((Item::HeartBeat, 1))));
        assert_eq!(one(b"\r\n"), Ok(Some((Item::HeartBeat, 2))));
        assert_eq!(one(b"\r"), Ok(None));
        assert_eq!(one(b"\rX"), Err(ParseError::StrayCarriageReturn));
        let mut out = Vec::new();
        let used = parse_all(
            b"\n\nDISCONNECT\nreceipt:7\n\n\0\n",
            Version::V12,
            &L,
            &mut out,
        );
        assert_eq!(used, Ok(26));
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[2], Item::Frame(f) if f.header("receipt") == Some("7")));
        assert_eq!(out[3], Item::HeartBeat);
    }

    #[test]
    fn escapes_decode_except_on_connect() {
        let f = frame(b"SUBSCRIBE\nid:a\\cb\\\\c\\nd\\re\nde\\cst:x\n\n\0");
        assert_eq!(f.header("id"), Some("a:b\\c\nd\re"));
        assert_eq!(f.header("de:st"), Some("x"));
        let f = frame(b"CONNECT\npasscode:a\\cb\n\n\0");
        assert_eq!(f.header("passcode"), Some("a\\cb"));
        assert_eq!(one(b"SUBSCRIBE\nid:a\\t\n\n\0"), Err(ParseError::BadEscape));
        assert_eq!(one(b"SUBSCRIBE\nid:a\\\n\n\0"), Err(ParseError::BadEscape));
        // 1.0 has no escaping at all.
        match parse_one(b"SUBSCRIBE\nid:a\\t\n\n\0", Version::V10, &L) {
            Ok(Some((Item::Frame(f), _))) => assert_eq!(f.header("id"), Some("a\\t")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_repeated_header_wins_and_values_keep_colons() {
        let f = frame(b"CONNECT\nlogin:a\nlogin:b\nhost:h:1\n\n\0");
        assert_eq!(f.header("login"), Some("a"));
        assert_eq!(f.header("host"), Some("h:1"));
        assert_eq!(f.headers.len(), 3);
    }

    #[test]
    fn content_length_allows_nul_in_body() {
        let f = frame(b"SEND\ndestination:/x\ncontent-length:3\n\na\0b\0");
        assert_eq!(f.body, b"a\0b");
        let f = frame(b"SEND\ndestination:/x\n\nhello\0");
        assert_eq!(f.body, b"hello");
        assert_eq!(
            one(b"SEND\ncontent-length:2\n\nabc\0"),
            Err(ParseError::MissingNul)
        );
        assert_eq!(
            one(b"SEND\ncontent-length:-1\n\n\0"),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            one(b"SEND\ncontent-length:99999999999999999999999\n\n\0"),
            Err(ParseError::TooLarge(4096))
        );
        assert_eq!(
            one(b"SEND\ncontent-length:5000\n\n"),
            Err(ParseError::TooLarge(4096))
        );
        assert_eq!(one(b"SEND\ncontent-length:5\n\nab"), Ok(None));
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(one(b"HELLO\n\n\0"), Err(ParseError::UnknownCommand));
        assert_eq!(one(b"connect\n\n\0"), Err(ParseError::UnknownCommand));
        assert_eq!(
            one(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Err(ParseError::UnknownCommand)
        );
        assert_eq!(
            one(b"SUBSCRIBE\nnocolon\n\n\0"),
            Err(ParseError::HeaderWithoutColon)
        );
        assert_eq!(one(b"SUBSCRIBE\nid:\xff\n\n\0"), Err(ParseError::NotUtf8));
        let many = format!("SUBSCRIBE\n{}\n\0", "a:b\n".repeat(9));
        assert_eq!(one(many.as_bytes()), Err(ParseError::TooManyHeaders(8)));
        let long = format!("SEND\n\n{}", "x".repeat(5000));
        assert_eq!(one(long.as_bytes()), Err(ParseError::TooLarge(4096)));
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        for cut in [
            b"SUBSCR".as_slice(),
            b"SUBSCRIBE\nid:1",
            b"SUBSCRIBE\nid:1\n\n",
        ] {
            assert_eq!(one(cut), Ok(None), "{:?}", String::from_utf8_lossy(cut));
        }
    }

    #[test]
    fn reader_joins_split_frames_and_keeps_nothing_after() {
        let whole = b"SUBSCRIBE\nid:0\ndestination:/topic/p/g\n\n\0\nACK\nid:1\n\n\0";
        for split in 1..whole.len() {
            let mut r = Reader::default();
            let mut out = Vec::new();
            r.feed(&whole[..split], Version::V12, &L, &mut out)
                .expect("first part");
            r.feed(&whole[split..], Version::V12, &L, &mut out)
                .expect("second part");
            let frames: Vec<_> = out
                .iter()
                .filter_map(|i| match i {
                    Item::Frame(f) => Some(f.command),
                    Item::HeartBeat => None,
                })
                .collect();
            assert_eq!(frames, [Command::Subscribe, Command::Ack], "split {split}");
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn reader_bounds_what_it_keeps() {
        let mut r = Reader::default();
        let mut out = Vec::new();
        r.feed(b"SEND\n\n", Version::V12, &L, &mut out)
            .expect("start");
        let chunk = vec![b'x'; 1000];
        let mut result = Ok(());
        for _ in 0..5 {
            result = r.feed(&chunk, Version::V12, &L, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ParseError::TooLarge(4096)));
        assert!(out.is_empty());
    }

    /// A small deterministic generator, so the test needs no dependency and always replays.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        const ALPHABET: &[u8] =
            b"\n\r\0:\\cnrt SUBSCRIBECONNECTACKcontent-length0123456789\xff\xc3";
        let seeds: [&[u8]; 4] = [
            b"SUBSCRIBE\nid:0\ndestination:/topic/p/g\n\n\0",
            b"SEND\ncontent-length:4\n\nab\0c\0",
            b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0",
            b"\r\n\n",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let small = Limits {
            max_frame_bytes: 256,
            max_headers: 4,
        };
        for round in 0..20_000 {
            let mut input: Vec<u8> = seeds[round % seeds.len()].to_vec();
            for _ in 0..(rng.next() % 6) {
                let at = (rng.next() as usize) % (input.len() + 1);
                match rng.next() % 3 {
                    0 => input.insert(at, ALPHABET[(rng.next() as usize) % ALPHABET.len()]),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.truncate(at),
                }
            }
            if round % 7 == 0 {
                input = (0..(rng.next() % 300)).map(|_| rng.next() as u8).collect();
            }
            for version in [Version::V10, Version::V11, Version::V12] {
                let mut r = Reader::default();
                let mut out = Vec::new();
                let split = (rng.next() as usize) % (input.len() + 1);
                if r.feed(&input[..split], version, &small, &mut out).is_ok() {
                    let _ = r.feed(&input[split..], version, &small, &mut out);
                }
                assert!(r.pending() <= small.max_frame_bytes);
            }
        }
    }
}
