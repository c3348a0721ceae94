//! WebSocket framing (RFC 6455) as far as a client needs it: the header of a server frame, and
//! client frames (masked, with a zero key: the payload goes out as is, which servers accept).

/// Text data.
pub const TEXT: u8 = 1;
/// Binary data.
pub const BINARY: u8 = 2;
/// Close.
pub const CLOSE: u8 = 8;
/// Ping.
pub const PING: u8 = 9;
/// Pong.
pub const PONG: u8 = 10;

/// One whole frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// RSV1: a message compressed with `permessage-deflate`.
    pub compressed: bool,
    /// Where the payload starts.
    pub start: usize,
    /// Where it ends (and the next frame starts).
    pub end: usize,
}

/// The frame at the front of `b`, or `None` while it is incomplete.
pub fn parse(b: &[u8]) -> Option<Frame> {
    if b.len() < 2 {
        return None;
    }
    let mut hdr = 2usize;
    let mut len = (b[1] & 0x7f) as usize;
    if len == 126 {
        len = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize;
        hdr = 4;
    } else if len == 127 {
        let mut l = [0u8; 8];
        l.copy_from_slice(b.get(2..10)?);
        len = usize::try_from(u64::from_be_bytes(l)).unwrap_or(usize::MAX);
        hdr = 10;
    }
    if b[1] & 0x80 != 0 {
        // Servers do not mask; a masked frame's key is skipped, its payload taken as is.
        hdr += 4;
    }
    let end = hdr.checked_add(len)?;
    (b.len() >= end).then_some(Frame {
        fin: b[0] & 0x80 != 0,
        opcode: b[0] & 0x0f,
        compressed: b[0] & 0x40 != 0,
        start: hdr,
        end,
    })
}

/// Appends a final client frame of `opcode` carrying `payload` (masked with a zero key).
pub fn push(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0x80 | 126);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked).
    fn server(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push(&mut v, opcode, payload);
        // Drop the mask bit and the zero key.
        let at = v.len() - payload.len() - 4;
        v.drain(at..at + 4);
        v[1] &= 0x7f;
        v
    }

    #[test]
    fn frames_of_each_length_form_parse_and_wait_for_their_end() {
        for n in [0usize, 125, 126, 65_535, 65_536] {
            let f = server(BINARY, &vec![7; n]);
            let p = parse(&f).expect("whole frame");
            assert_eq!(
                (p.fin, p.opcode, p.end - p.start, p.end),
                (true, BINARY, n, f.len())
            );
            assert!(parse(&f[..f.len() - 1]).is_none() || n == 0);
        }
    }

    #[test]
    fn client_frames_are_masked_with_a_zero_key() {
        let mut v = Vec::new();
        push(&mut v, TEXT, b"hi");
        assert_eq!(v, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        let p = parse(&v).expect("whole");
        assert_eq!(&v[p.start..p.end], b"hi");
    }
}
