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
    /// `{"type":"auth","token":"..","resume":[..]}`: the token, as the first frame, and the
    /// streams to resume where the client stopped.
    Auth {
        /// The JWT.
        token: Cow<'a, str>,
        /// Streams to resume (empty: none).
        resume: Vec<Since>,
        /// The device this connection is, for the server to remember what it acknowledged
        /// of its user stream.
        device: Option<Cow<'a, str>>,
    },
    /// `{"type":"subscribe","id":1,"group":"..","since":{"offset":N,"epoch":E}}`.
    Subscribe {
        /// Request id echoed in the answer.
        id: u64,
        /// The group to join.
        group: Cow<'a, str>,
        /// Where the client stopped on the group's stream, to get what it missed.
        since: Option<Position>,
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
    /// `{"type":"ack","id":1,"stream":"user","offset":N,"epoch":E}`: every message of the
    /// user stream up to offset N (of epoch E) was handled by this device.
    Ack {
        /// Request id echoed in the answer.
        id: u64,
        /// Up to where.
        position: Position,
    },
    /// `{"type":"refresh","id":1,"token":".."}`: a fresh token before the current one expires.
    Refresh {
        /// Request id echoed in the answer.
        id: u64,
        /// The fresh JWT.
        token: Cow<'a, str>,
    },
}

/// A client's position on a stream: the last offset it got, under the epoch it got it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The last offset received.
    pub offset: u64,
    /// The stream's epoch with it.
    pub epoch: u32,
}

/// Which stream of the connection's to resume, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The stream.
    pub stream: StreamOf,
    /// Where the client stopped.
    pub position: Position,
}

/// A stream named by a client: one of its groups, its own user stream, or the broadcasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOf {
    /// A group the connection is in.
    Group(String),
    /// The connection's own user.
    User,
    /// The project's broadcasts.
    Broadcast,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSince {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    user: bool,
    #[serde(default)]
    broadcast: bool,
    offset: u64,
    epoch: u32,
}

impl RawSince {
    fn since(self) -> Option<Since> {
        let stream = match (self.group, self.user, self.broadcast) {
            (Some(g), false, false) => StreamOf::Group(g),
            (None, true, false) => StreamOf::User,
            (None, false, true) => StreamOf::Broadcast,
            _ => return None,
        };
        Some(Since {
            stream,
            position: Position {
                offset: self.offset,
                epoch: self.epoch,
            },
        })
    }
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
    #[serde(default)]
    since: Option<Position>,
    #[serde(default)]
    resume: Option<Vec<RawSince>>,
    #[serde(default, borrow)]
    device: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<u32>,
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
            resume: match raw.resume {
                None => Vec::new(),
                Some(list) => list
                    .into_iter()
                    .map(RawSince::since)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        missing("each resume entry names one of \"group\", \"user\", \"broadcast\"")
                    })?,
            },
            device: raw.device,
        },
        "subscribe" => ClientFrame::Subscribe {
            id,
            group: raw
                .group
                .ok_or_else(|| missing("subscribe needs \"group\""))?,
            since: raw.since,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            id,
            group: raw
                .group
                .ok_or_else(|| missing("unsubscribe needs \"group\""))?,
        },
        "ping" => ClientFrame::Ping { id },
        "ack" => {
            if raw.stream.as_deref() != Some("user") {
                return Err(missing(
                    "ack needs \"stream\":\"user\" (only user streams are acknowledged)",
                ));
            }
            match (raw.offset, raw.epoch) {
                (Some(offset), Some(epoch)) => ClientFrame::Ack {
                    id,
                    position: Position { offset, epoch },
                },
                _ => return Err(missing("ack needs \"offset\" and \"epoch\"")),
            }
        }
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

/// `{"type":"resumed","id":N,<stream>,"epoch":E,"offset":O,"recovered":B}`: the missed
/// messages of a stream were sent (all of them when `recovered`), live ones follow.
pub fn resumed(id: u64, stream: &StreamOf, epoch: u32, offset: u64, recovered: bool) -> Bytes {
    let mut s = format!(r#"{{"type":"resumed","id":{id},"#);
    match stream {
        StreamOf::Group(g) => {
            s.push_str(r#""group":"#);
            push_json_string(&mut s, g);
        }
        StreamOf::User => s.push_str(r#""user":true"#),
        StreamOf::Broadcast => s.push_str(r#""broadcast":true"#),
    }
    s.push_str(&format!(
        r#","epoch":{epoch},"offset":{offset},"recovered":{recovered}}}"#
    ));
    text_frame(&s)
}

/// `{"type":"subscribed","group":".."}` (or `unsubscribed`): the server subscribed the
/// connection to a group (or unsubscribed it) on its own initiative.
pub fn membership(group: &str, subscribed: bool) -> Bytes {
    let mut s = String::from(if subscribed {
        r#"{"type":"subscribed","group":"#
    } else {
        r#"{"type":"unsubscribed","group":"#
    });
    push_json_string(&mut s, group);
    s.push('}');
    text_frame(&s)
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
                group: "news".into(),
                since: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","id":7,"group":"news","since":{"offset":3,"epoch":9}}"#),
            Ok(ClientFrame::Subscribe {
                id: 7,
                group: "news".into(),
                since: Some(Position {
                    offset: 3,
                    epoch: 9
                }),
            })
        );
        match parse(
            r#"{"type":"auth","token":"t","resume":[{"user":true,"offset":1,"epoch":2},{"group":"g","offset":0,"epoch":2}]}"#,
        ) {
            Ok(ClientFrame::Auth { resume, .. }) => {
                assert_eq!(resume.len(), 2);
                assert_eq!(resume[0].stream, StreamOf::User);
                assert_eq!(resume[1].stream, StreamOf::Group("g".into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(r#"{"type":"auth","token":"t","resume":[{"user":true,"broadcast":true,"offset":1,"epoch":2}]}"#)
                .map_err(|p| p.code),
            Err(FrameError::BadFrame)
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping { id: 0 }));
        assert_eq!(
            parse(r#"{"type":"ack","id":2,"stream":"user","offset":5,"epoch":9}"#),
            Ok(ClientFrame::Ack {
                id: 2,
                position: Position {
                    offset: 5,
                    epoch: 9
                }
            })
        );
        for bad in [
            r#"{"type":"ack","id":2,"offset":5,"epoch":9}"#,
            r#"{"type":"ack","id":2,"stream":"news","offset":5,"epoch":9}"#,
            r#"{"type":"ack","id":2,"stream":"user","epoch":9}"#,
        ] {
            assert_eq!(
                parse(bad).map_err(|p| (p.id, p.code)),
                Err((2, FrameError::BadFrame)),
                "{bad}"
            );
        }
        match parse(r#"{"type":"auth","token":"t","device":"phone-1"}"#) {
            Ok(ClientFrame::Auth { device, .. }) => assert_eq!(device.as_deref(), Some("phone-1")),
            other => panic!("{other:?}"),
        }
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
