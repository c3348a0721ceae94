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
    }
}
