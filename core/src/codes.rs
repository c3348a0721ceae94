//! Every close code a client can see, in one table. `docs/protocol.md` documents the same table;
//! a code never changes meaning.

/// Why the server closes a WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: normal closure (the client asked, or answered our close).
    Normal = 1000,
    /// 1001: the server is shutting down; reconnect after the hinted delay.
    GoingAway = 1001,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError = 1002,
    /// 1009: a message was larger than the configured maximum.
    MessageTooBig = 1009,
    /// 1011: an unexpected server error.
    InternalError = 1011,
    /// 4001: no token was presented (nor an `auth` frame within the deadline).
    AuthRequired = 4001,
    /// 4002: the token is malformed, its signature or algorithm is wrong, or its `kid` is unknown.
    InvalidToken = 4002,
    /// 4003: the token is valid but not for this project (`aud`), or its claims are invalid.
    Forbidden = 4003,
    /// 4004: the project in the URL does not exist.
    UnknownProject = 4004,
    /// 4005: the token expired and no fresh one came in a `refresh` frame.
    TokenExpired = 4005,
    /// 4006: the peer stopped answering pings.
    PingTimeout = 4006,
    /// 4008: the client read too slowly and its outbound queue overflowed.
    SlowConsumer = 4008,
    /// 4009: an operator disconnected the connection (`Disconnect` call).
    DisconnectedByOperator = 4009,
    /// 4010: the refreshed token names another user.
    RefreshMismatch = 4010,
    /// 4011: the user already has the project's maximum of connections on this edge.
    TooManyConnections = 4011,
    /// 4012: another connection of the same project took over this one's session (MQTT client id).
    SessionTakenOver = 4012,
    /// 4013: the client tried to publish; clients only receive (MQTT `PUBLISH`, STOMP `SEND`).
    PublishNotAllowed = 4013,
    /// 4014: the user is banned from the project (admin API `BanUser`); reconnecting is refused
    /// until the ban expires (the hint says when) or is lifted.
    Banned = 4014,
    /// 4029: the client sent frames faster than the per-connection rate limit.
    RateLimited = 4029,
}

impl CloseCode {
    /// The numeric close code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// A short reason sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::AuthRequired => "authentication required",
            CloseCode::InvalidToken => "invalid token",
            CloseCode::Forbidden => "forbidden",
            CloseCode::UnknownProject => "unknown project",
            CloseCode::TokenExpired => "token expired",
            CloseCode::PingTimeout => "ping timeout",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::DisconnectedByOperator => "disconnected by operator",
            CloseCode::RefreshMismatch => "refreshed token names another user",
            CloseCode::TooManyConnections => "too many connections for this user",
            CloseCode::SessionTakenOver => "session taken over",
            CloseCode::PublishNotAllowed => "publishing not allowed",
            CloseCode::Banned => "banned",
            CloseCode::RateLimited => "too many messages",
        }
    }

    /// The HTTP status used instead when refusals happen before the upgrade.
    pub fn http_status(self) -> u16 {
        match self {
            CloseCode::AuthRequired | CloseCode::InvalidToken | CloseCode::TokenExpired => 401,
            CloseCode::Forbidden | CloseCode::Banned => 403,
            CloseCode::UnknownProject => 404,
            CloseCode::TooManyConnections | CloseCode::RateLimited => 429,
            _ => 400,
        }
    }

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::AuthRequired => "auth_required",
            CloseCode::InvalidToken => "invalid_token",
            CloseCode::Forbidden => "forbidden",
            CloseCode::UnknownProject => "unknown_project",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::PingTimeout => "ping_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::DisconnectedByOperator => "operator",
            CloseCode::RefreshMismatch => "refresh_mismatch",
            CloseCode::TooManyConnections => "too_many_connections",
            CloseCode::SessionTakenOver => "session_taken_over",
            CloseCode::PublishNotAllowed => "publish_not_allowed",
            CloseCode::Banned => "banned",
            CloseCode::RateLimited => "rate_limited",
        }
    }
}

/// Error codes carried by `error` frames (answers to a client frame; the connection stays open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameError {
    /// The frame is not valid JSON or lacks a required field.
    BadFrame = 4400,
    /// The frame's `type` is unknown.
    UnknownType = 4401,
    /// The token does not allow subscribing to that group (`channels` claim).
    NotAllowed = 4403,
    /// The group name is outside the documented alphabet or length.
    BadName = 4422,
    /// The token in a `refresh` frame is invalid.
    BadToken = 4402,
    /// Binary frames are not part of the native protocol.
    BinaryNotSupported = 4415,
    /// The connection is already in the maximum number of groups.
    TooManyGroups = 4429,
    /// A resume asked for a stream its project keeps no history of.
    NotRecoverable = 4404,
    /// History could not be read: the stream goes on live, its missed messages were not sent.
    HistoryUnavailable = 4503,
}

impl FrameError {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }
}
