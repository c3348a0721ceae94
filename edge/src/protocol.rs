//! The native protocol (`herald.v1`): what clients send, and the small server replies.
//! `docs/protocol.md` is the specification; this module follows it.

use std::borrow::Cow;

use bytes::Bytes;
use herald_core::codes::FrameError;
use serde::Deserialize;

use crate::frame::{push_json_string, text_frame};

/// The sub-protocol name of the native protocol.
pub const NATIVE_PROTOCOL: &str = "herald.v1";

/// A frame from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// `{"type":"auth","token":".."}`: the token, as the first frame.
    Auth {
        /// The JWT.
        token: Cow<'a, str>,
    },
    /// `{"type":"subscribe","id":1,"group":".."}`.
    Subscribe {
        /// Request id echoed in the answer.
        id: u64,
        /// The group to join.
        group: Cow<'a, str>,
    },
    /// `{"type":"unsubscribe","id":1,"group":".."}`.
    Unsubscribe {
        /// Request id echoed in the answer.
        id: u64,
        /// The group to leave.
        group: Cow<'a, str>,
    },
    /// `{"type":"ping","id":1}`: an application-level ping, answered with `pong`.
    Ping {
        /// Request id echoed in the answer.
        id: u64,
    },
    /// `{"type":"refresh","id":1,"token":".."}`: a fresh token before the current one expires.
    Refresh {
        /// Request id echoed in the answer.
        id: u64,
        /// The fresh JWT.
        token: Cow<'a, str>,
    },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    id: u64,
    #[serde(default, borrow)]
    group: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    token: Option<Cow<'a, str>>,
}

/// Why a client frame was not understood; answered with an `error` frame.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameProblem {
    /// The request id, when it could be read.
    pub id: u64,
    /// The error code.
    pub code: FrameError,
    /// What was wrong.
    pub message: &'static str,
}

/// Parses one text frame from a client.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, FrameProblem> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| FrameProblem {
        id: 0,
        code: FrameError::BadFrame,
        message: "frame is not a JSON object with a string \"type\"",
    })?;
    let id = raw.id;
    let missing = |message| FrameProblem {
        id,
        code: FrameError::BadFrame,
        message,
    };
    Ok(match &*raw.kind {
        "auth" => ClientFrame::Auth {
            token: raw.token.ok_or_else(|| missing("auth needs \"token\""))?,
        },
        "subscribe" => ClientFrame::Subscribe {
            id,
            group: raw
                .group
                .ok_or_else(|| missing("subscribe needs \"group\""))?,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            id,
            group: raw
                .group
                .ok_or_else(|| missing("unsubscribe needs \"group\""))?,
        },
        "ping" => ClientFrame::Ping { id },
        "refresh" => ClientFrame::Refresh {
            id,
            token: raw
                .token
                .ok_or_else(|| missing("refresh needs \"token\""))?,
        },
        _ => {
            return Err(FrameProblem {
                id,
                code: FrameError::UnknownType,
                message: "unknown frame type",
            });
        }
    })
}

/// `{"type":"ack","id":N}`.
pub fn ack(id: u64) -> Bytes {
    text_frame(&format!(r#"{{"type":"ack","id":{id}}}"#))
}

/// `{"type":"pong","id":N}`.
pub fn pong(id: u64) -> Bytes {
    text_frame(&format!(r#"{{"type":"pong","id":{id}}}"#))
}

/// `{"type":"error","id":N,"code":C,"message":".."}`.
pub fn error(id: u64, code: FrameError, message: &str) -> Bytes {
    let mut s = format!(
        r#"{{"type":"error","id":{id},"code":{},"message":"#,
        code.code()
    );
    push_json_string(&mut s, message);
    s.push('}');
    text_frame(&s)
}

/// `{"type":"welcome",...}`: sent once authenticated.
pub fn welcome(
    conn: &str,
    user: &str,
    groups: &[&str],
    ping_interval_secs: u64,
    expires_unix: u64,
) -> Bytes {
    let mut s = String::with_capacity(128);
    s.push_str(r#"{"type":"welcome","connection":"#);
    push_json_string(&mut s, conn);
    s.push_str(r#","user":"#);
    push_json_string(&mut s, user);
    s.push_str(r#","groups":["#);
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_json_string(&mut s, g);
    }
    s.push_str(&format!(
        r#"],"ping_interval":{ping_interval_secs},"expires":{expires_unix}}}"#
    ));
    text_frame(&s)
}

/// `{"type":"disconnect","code":C,"reason":"..","reconnect_after_ms":N}`: sent just before a
/// close frame so clients read the reconnect hint, which a close reason cannot carry reliably.
pub fn disconnect(code: u16, reason: &str, reconnect_after_ms: u32) -> Bytes {
    let mut s = format!(r#"{{"type":"disconnect","code":{code},"reason":"#);
    push_json_string(&mut s, reason);
    s.push_str(&format!(r#","reconnect_after_ms":{reconnect_after_ms}}}"#));
    text_frame(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_frame_kind() {
        assert_eq!(
            parse(r#"{"type":"subscribe","id":7,"group":"news"}"#),
            Ok(ClientFrame::Subscribe {
                id: 7,
                group: "news".into()
            })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping { id: 0 }));
        assert!(matches!(
            parse(r#"{"type":"auth","token":"a\"b"}"#),
            Ok(ClientFrame::Auth { .. })
        ));
        assert_eq!(parse("nope").map_err(|p| p.code), Err(FrameError::BadFrame));
        assert_eq!(
            parse(r#"{"type":"dance","id":3}"#).map_err(|p| (p.id, p.code)),
            Err((3, FrameError::UnknownType))
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","id":4}"#).map_err(|p| (p.id, p.code)),
            Err((4, FrameError::BadFrame))
        );
    }
}
