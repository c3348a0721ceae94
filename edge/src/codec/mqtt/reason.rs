//! MQTT 5 reason codes, MQTT 3.1.1 `CONNACK` return codes, and how Herald's close codes map to
//! them (one table, documented in `docs/protocol-mqtt.md`).

use herald_core::codes::CloseCode;

/// An MQTT 5 reason code: the byte in `CONNACK`, `SUBACK`, `UNSUBACK`, `PUBACK` and `DISCONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// 0x00: success, normal disconnection, granted QoS 0.
    Success = 0x00,
    /// 0x01: granted QoS 1 (`SUBACK`).
    GrantedQos1 = 0x01,
    /// 0x11: no subscription existed (`UNSUBACK`).
    NoSubscriptionExisted = 0x11,
    /// 0x80: unspecified error.
    UnspecifiedError = 0x80,
    /// 0x81: the packet could not be parsed.
    MalformedPacket = 0x81,
    /// 0x82: a packet that breaks the protocol's rules.
    ProtocolError = 0x82,
    /// 0x84: the protocol name or level is not one Herald speaks.
    UnsupportedProtocolVersion = 0x84,
    /// 0x85: the client identifier is not acceptable.
    ClientIdentifierNotValid = 0x85,
    /// 0x86: the token (password) was missing or did not verify.
    BadUserNameOrPassword = 0x86,
    /// 0x87: not authorized (a claim, a channel, a topic of another user, client publishing).
    NotAuthorized = 0x87,
    /// 0x88: the server is unavailable.
    ServerUnavailable = 0x88,
    /// 0x8A: the client is banned (CONNACK only).
    Banned = 0x8A,
    /// 0x8B: the server is shutting down.
    ServerShuttingDown = 0x8B,
    /// 0x8C: the authentication method is not supported (enhanced authentication).
    BadAuthenticationMethod = 0x8C,
    /// 0x8D: no packet within 1.5 times the keep alive.
    KeepAliveTimeout = 0x8D,
    /// 0x8E: another connection with the same client id took the session over.
    SessionTakenOver = 0x8E,
    /// 0x8F: the topic filter is well formed but not accepted.
    TopicFilterInvalid = 0x8F,
    /// 0x94: a topic alias the server did not allow.
    TopicAliasInvalid = 0x94,
    /// 0x95: the packet exceeds the maximum packet size.
    PacketTooLarge = 0x95,
    /// 0x96: the client sends too fast.
    MessageRateTooHigh = 0x96,
    /// 0x97: a quota is exceeded (connections of a user, groups of a connection, queued bytes).
    QuotaExceeded = 0x97,
    /// 0x98: an operator closed the connection.
    AdministrativeAction = 0x98,
    /// 0x9E: shared subscriptions (`$share/...`) are not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// 0xA0: the connection lived as long as it was allowed (the token expired).
    MaximumConnectTime = 0xA0,
    /// 0xA1: subscription identifiers are not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
    /// 0xA2: wildcard subscriptions (`+`, `#`) are not supported.
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl Reason {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// An MQTT 3.1.1 (and 3.1) `CONNACK` return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectReturn {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: the protocol level is not supported.
    UnacceptableProtocolVersion = 1,
    /// 2: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 3: the service is unavailable.
    ServerUnavailable = 3,
    /// 4: the user name or password is malformed or wrong.
    BadUserNameOrPassword = 4,
    /// 5: the client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturn {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        self as u8
    }
}

/// The 3.1.1 `CONNACK` return code for a connection refused with `code`; `None` when 3.1.1 has no
/// code for it (the connection is then closed without a `CONNACK`, as the specification requires
/// for malformed and out-of-order packets).
pub fn connack_v3(code: CloseCode) -> Option<ConnectReturn> {
    use CloseCode as C;
    Some(match code {
        C::AuthRequired | C::InvalidToken | C::TokenExpired | C::UnknownProject => {
            ConnectReturn::BadUserNameOrPassword
        }
        C::Forbidden | C::RefreshMismatch | C::PublishNotAllowed | C::Banned => {
            ConnectReturn::NotAuthorized
        }
        C::GoingAway
        | C::InternalError
        | C::TooManyConnections
        | C::RateLimited
        | C::SlowConsumer
        | C::DisconnectedByOperator
        | C::SessionTakenOver => ConnectReturn::ServerUnavailable,
        C::Normal | C::ProtocolError | C::MessageTooBig | C::PingTimeout => return None,
    })
}

/// The 5.0 `CONNACK` reason code for a connection refused with `code`.
pub fn connack_v5(code: CloseCode) -> Reason {
    use CloseCode as C;
    match code {
        C::AuthRequired | C::InvalidToken | C::TokenExpired | C::UnknownProject => {
            Reason::BadUserNameOrPassword
        }
        C::Forbidden | C::RefreshMismatch | C::PublishNotAllowed => Reason::NotAuthorized,
        C::Banned => Reason::Banned,
        C::TooManyConnections => Reason::QuotaExceeded,
        C::RateLimited => Reason::MessageRateTooHigh,
        C::ProtocolError => Reason::ProtocolError,
        C::MessageTooBig => Reason::PacketTooLarge,
        C::GoingAway | C::SlowConsumer | C::DisconnectedByOperator | C::SessionTakenOver => {
            Reason::ServerUnavailable
        }
        C::Normal | C::InternalError | C::PingTimeout => Reason::UnspecifiedError,
    }
}

/// The 5.0 `DISCONNECT` reason code sent before the server closes a live connection with `code`.
pub fn disconnect_v5(code: CloseCode) -> Reason {
    use CloseCode as C;
    match code {
        C::Normal => Reason::Success,
        C::GoingAway => Reason::ServerShuttingDown,
        C::ProtocolError => Reason::ProtocolError,
        C::MessageTooBig => Reason::PacketTooLarge,
        C::InternalError => Reason::UnspecifiedError,
        C::AuthRequired | C::InvalidToken => Reason::BadUserNameOrPassword,
        C::Forbidden | C::UnknownProject | C::RefreshMismatch | C::PublishNotAllowed => {
            Reason::NotAuthorized
        }
        C::TokenExpired => Reason::MaximumConnectTime,
        C::PingTimeout => Reason::KeepAliveTimeout,
        C::SlowConsumer | C::TooManyConnections => Reason::QuotaExceeded,
        // 0x8A is a CONNACK code only: a live connection is closed by an operator's action.
        C::DisconnectedByOperator | C::Banned => Reason::AdministrativeAction,
        C::SessionTakenOver => Reason::SessionTakenOver,
        C::RateLimited => Reason::MessageRateTooHigh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_a_connect_have_a_connack_code() {
        for c in [
            CloseCode::AuthRequired,
            CloseCode::InvalidToken,
            CloseCode::TokenExpired,
            CloseCode::UnknownProject,
        ] {
            assert_eq!(connack_v3(c), Some(ConnectReturn::BadUserNameOrPassword));
            assert_eq!(connack_v5(c), Reason::BadUserNameOrPassword);
        }
        assert_eq!(
            connack_v3(CloseCode::Forbidden),
            Some(ConnectReturn::NotAuthorized)
        );
        assert_eq!(connack_v5(CloseCode::Forbidden), Reason::NotAuthorized);
        assert_eq!(
            connack_v5(CloseCode::TooManyConnections),
            Reason::QuotaExceeded
        );
        assert_eq!(connack_v3(CloseCode::ProtocolError), None);
    }

    #[test]
    fn live_closes_have_their_own_disconnect_reason() {
        assert_eq!(
            disconnect_v5(CloseCode::PingTimeout),
            Reason::KeepAliveTimeout
        );
        assert_eq!(
            disconnect_v5(CloseCode::SessionTakenOver),
            Reason::SessionTakenOver
        );
        assert_eq!(
            disconnect_v5(CloseCode::GoingAway),
            Reason::ServerShuttingDown
        );
        assert_eq!(
            disconnect_v5(CloseCode::TokenExpired),
            Reason::MaximumConnectTime
        );
        assert_eq!(disconnect_v5(CloseCode::Normal).byte(), 0);
    }
}
