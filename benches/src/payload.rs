//! The payload every scenario sends: JSON of a given size carrying its send time
//! (`{"t":<unix ns>,"p":"xxx…"}`), so every receiver can tell its latency.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A JSON payload of exactly `size` bytes (at least 40) carrying the send time.
pub fn payload(size: usize) -> Vec<u8> {
    let head = format!(r#"{{"t":{},"p":""#, now_ns());
    let pad = size.saturating_sub(head.len() + 2).max(1);
    let mut v = head.into_bytes();
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(br#""}"#);
    v
}

/// What fills a payload after its send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PayloadKind {
    /// `x`s (compresses to almost nothing).
    #[default]
    Pad,
    /// Quote objects with varied numbers, as application JSON.
    Quotes,
}

/// A JSON payload of about `size` bytes (at least 60) carrying the send time, filled as `kind`
/// says: [`payload`] for [`PayloadKind::Pad`]; for [`PayloadKind::Quotes`]
/// `{"t":<unix ns>,"q":[{"s":"SYM7","b":101.37,"a":101.41,"v":3812},…]}`, its numbers drawn
/// from the send time (every message differs).
pub fn payload_of(kind: PayloadKind, size: usize) -> Vec<u8> {
    if kind == PayloadKind::Pad {
        return payload(size);
    }
    let t = now_ns();
    let mut s = format!(r#"{{"t":{t},"q":["#);
    let mut x = t | 1;
    let mut next = || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while s.len() + 60 < size.max(60) {
        let (a, b, c) = (next(), next(), next());
        let bid = 100 + a % 900;
        s.push_str(&format!(
            r#"{{"s":"SYM{}","b":{bid}.{:02},"a":{bid}.{:02},"v":{}}},"#,
            a % 50,
            b % 100,
            (b >> 8) % 100,
            c % 10_000
        ));
    }
    if s.ends_with(',') {
        s.pop();
    }
    s.push_str("]}");
    s.into_bytes()
}

/// The send time in a payload, if any.
pub fn sent_at(bytes: &[u8]) -> Option<u64> {
    let i = bytes.windows(4).position(|w| w == br#""t":"#)? + 4;
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&bytes[i..i + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_time_and_size() {
        let p = payload(100);
        assert_eq!(p.len(), 100);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
        assert!(sent_at(&p).is_some_and(|t| t > 0));
        let q = payload_of(PayloadKind::Quotes, 1000);
        assert!((900..=1000).contains(&q.len()), "{}", q.len());
        assert!(serde_json::from_slice::<serde_json::Value>(&q).is_ok());
        assert!(sent_at(&q).is_some_and(|t| t > 0));
    }
}
