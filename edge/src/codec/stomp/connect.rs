//! What a `CONNECT` (or `STOMP`) frame asks for: the protocol version, heart-beating and the
//! token, and the heart-beat intervals both sides then keep.

use super::Version;
use super::parse::{Command, Frame};

/// A client's `CONNECT`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version both speak: the highest of `accept-version` this edge knows (1.0 without it).
    pub version: Version,
    /// The client's `heart-beat`: (it can send every `.0` ms, it wants to receive every `.1` ms);
    /// 0 means never.
    pub heart_beat: (u32, u32),
    /// The JWT, from the first of: `Authorization: Bearer <jwt>` (name in any case), `token`,
    /// `passcode`. Empty values count as absent.
    pub token: Option<String>,
    /// The `receipt` header, answered with a `RECEIPT` after `CONNECTED`.
    pub receipt: Option<String>,
}

/// Why a `CONNECT` frame is refused (answered with `ERROR`, then the connection closes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The first frame is not `CONNECT` or `STOMP`.
    #[error("the first frame must be CONNECT or STOMP")]
    NotConnect,
    /// No version of `accept-version` is spoken here.
    #[error("Supported protocol versions are 1.0,1.1,1.2")]
    NoCommonVersion,
    /// `heart-beat` is not two comma-separated integers.
    #[error("invalid heart-beat header")]
    BadHeartBeat,
}

/// Reads a `CONNECT`/`STOMP` frame.
pub fn read_connect(frame: &Frame) -> Result<Connect, ConnectError> {
    if !matches!(frame.command, Command::Connect | Command::Stomp) {
        return Err(ConnectError::NotConnect);
    }
    let version = match frame.header("accept-version") {
        None => Version::V10,
        Some(list) => list
            .split(',')
            .filter_map(Version::from_header)
            .max()
            .ok_or(ConnectError::NoCommonVersion)?,
    };
    let heart_beat = match frame.header("heart-beat") {
        None => (0, 0),
        Some(v) => parse_heart_beat(v).ok_or(ConnectError::BadHeartBeat)?,
    };
    let bearer = frame
        .header_ignore_case("authorization")
        .and_then(|v| {
            let v = v.trim();
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty());
    let token = bearer
        .or_else(|| frame.header("token").filter(|t| !t.is_empty()))
        .or_else(|| frame.header("passcode").filter(|t| !t.is_empty()))
        .map(str::to_owned);
    Ok(Connect {
        version,
        heart_beat,
        token,
        receipt: frame.header("receipt").map(str::to_owned),
    })
}

fn parse_heart_beat(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once(',')?;
    let num = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Beyond u32 milliseconds (49 days) is the same as "very rarely".
        Some(
            s.parse::<u64>()
                .map_or(u32::MAX, |n| n.min(u32::MAX as u64) as u32),
        )
    };
    Some((num(a)?, num(b)?))
}

/// Heart-beat intervals both sides keep, in milliseconds; 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// The server sends an EOL when it sent nothing else for this long.
    pub send_ms: u32,
    /// The client promised to send something at least this often.
    pub expect_ms: u32,
}

impl HeartBeat {
    /// Negotiates per STOMP 1.1/1.2: `client` from its `CONNECT`, `server` the edge's own
    /// (what it can send, what it wants), as sent in `CONNECTED`.
    pub fn negotiate(client: (u32, u32), server: (u32, u32)) -> HeartBeat {
        let pick = |mine: u32, theirs: u32| {
            if mine == 0 || theirs == 0 {
                0
            } else {
                mine.max(theirs)
            }
        };
        HeartBeat {
            send_ms: pick(server.0, client.1),
            expect_ms: pick(client.0, server.1),
        }
    }

    /// How long the client may stay silent before the connection is closed: the negotiated
    /// interval and half of it again, plus one second (the edge's timer granularity).
    pub fn silence_limit_ms(&self) -> Option<u64> {
        (self.expect_ms > 0).then(|| {
            let e = u64::from(self.expect_ms);
            e + e / 2 + 1000
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::stomp::Limits;
    use crate::codec::stomp::parse::{Item, parse_one};

    fn connect(text: &str) -> Result<Connect, ConnectError> {
        match parse_one(text.as_bytes(), Version::V12, &Limits::default()) {
            Ok(Some((Item::Frame(f), _))) => read_connect(&f),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_pick_the_highest_known() {
        let c = connect("CONNECT\naccept-version:1.0,1.1,1.2\n\n\0").expect("ok");
        assert_eq!(c.version, Version::V12);
        let c = connect("STOMP\naccept-version:1.1,2.0\n\n\0").expect("ok");
        assert_eq!(c.version, Version::V11);
        let c = connect("CONNECT\n\n\0").expect("ok");
        assert_eq!(c.version, Version::V10);
        assert_eq!(
            connect("CONNECT\naccept-version:2.0\n\n\0"),
            Err(ConnectError::NoCommonVersion)
        );
        assert_eq!(
            connect("SUBSCRIBE\nid:1\n\n\0"),
            Err(ConnectError::NotConnect)
        );
    }

    #[test]
    fn token_comes_from_authorization_then_token_then_passcode() {
        let all = "CONNECT\nauthorization:bearer  AAA \ntoken:BBB\npasscode:CCC\n\n\0";
        assert_eq!(connect(all).expect("ok").token.as_deref(), Some("AAA"));
        let basic = "CONNECT\nAuthorization:Basic xyz\ntoken:BBB\npasscode:CCC\n\n\0";
        assert_eq!(connect(basic).expect("ok").token.as_deref(), Some("BBB"));
        let pass = "CONNECT\nlogin:alice\npasscode:CCC\ntoken:\n\n\0";
        assert_eq!(connect(pass).expect("ok").token.as_deref(), Some("CCC"));
        assert_eq!(connect("CONNECT\nlogin:x\n\n\0").expect("ok").token, None);
    }

    #[test]
    fn heart_beat_header_is_checked() {
        let c = connect("CONNECT\nheart-beat:10000, 5000\nreceipt:r1\n\n\0").expect("ok");
        assert_eq!(c.heart_beat, (10000, 5000));
        assert_eq!(c.receipt.as_deref(), Some("r1"));
        let huge = connect("CONNECT\nheart-beat:99999999999,0\n\n\0").expect("ok");
        assert_eq!(huge.heart_beat, (u32::MAX, 0));
        for bad in ["10000", "a,b", "-1,0", ",", "1,2,3"] {
            assert_eq!(
                connect(&format!("CONNECT\nheart-beat:{bad}\n\n\0")),
                Err(ConnectError::BadHeartBeat),
                "{bad}"
            );
        }
    }

    #[test]
    fn heart_beats_negotiate_to_the_slower_side() {
        let hb = HeartBeat::negotiate((4000, 20000), (10000, 10000));
        assert_eq!(
            hb,
            HeartBeat {
                send_ms: 20000,
                expect_ms: 10000
            }
        );
        assert_eq!(hb.silence_limit_ms(), Some(16000));
        let off = HeartBeat::negotiate((0, 0), (10000, 10000));
        assert_eq!(off, HeartBeat::default());
        assert_eq!(off.silence_limit_ms(), None);
        let server_off = HeartBeat::negotiate((1000, 1000), (0, 0));
        assert_eq!(server_off, HeartBeat::default());
    }
}
