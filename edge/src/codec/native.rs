//! The native protocol `herald.v1` as a codec: JSON text frames (`docs/protocol.md`).

use std::borrow::Cow;

use bytes::Bytes;
use herald_core::codes::{CloseCode, FrameError};
use tokio_tungstenite::tungstenite::Message;

use super::{Codec, Hello, Welcome};
use crate::device::{AckRefused, Device, ack_user};
use crate::protocol::{self, ClientFrame};
use crate::session::{Next, RefreshRefused, ResumeRefused, SessionOps, SubscribeRefused};

/// The `auth` frame: the token, when it is the first frame. Anything else is refused with
/// 4001 (authentication required).
pub(crate) fn hello(first: Message) -> Result<Hello, CloseCode> {
    let Message::Text(t) = first else {
        return Err(CloseCode::AuthRequired);
    };
    match protocol::parse(&t) {
        Ok(ClientFrame::Auth {
            token,
            resume,
            device,
        }) => Ok(Hello {
            token: Some(token.into_owned()),
            project: None,
            codec: Codec::Native(None),
            resume,
            device: device.map(Cow::into_owned),
        }),
        _ => Err(CloseCode::AuthRequired),
    }
}

/// The `welcome` frame.
pub(crate) fn welcome(w: &Welcome<'_>) -> Bytes {
    protocol::welcome(
        w.connection_id,
        w.user,
        w.groups,
        w.ping_interval_secs,
        w.expires_unix,
    )
}

/// A `disconnect` frame before the close when there is a reconnect hint.
pub(crate) fn closing(code: CloseCode, reconnect_after_ms: u32) -> Option<Bytes> {
    (reconnect_after_ms > 0)
        .then(|| protocol::disconnect(code.code(), code.reason(), reconnect_after_ms))
}

/// Handles one client frame.
pub(crate) async fn on_message(
    ops: &mut SessionOps<'_>,
    device: &Option<Box<Device>>,
    m: Message,
) -> Next {
    let text = match m {
        Message::Text(t) => t,
        Message::Binary(_) => {
            ops.push(protocol::error(
                0,
                FrameError::BinaryNotSupported,
                "binary frames are not part of herald.v1",
            ));
            return Next::Continue;
        }
        _ => return Next::Continue,
    };
    let frame = match protocol::parse(&text) {
        Ok(f) => f,
        Err(p) => {
            ops.push(protocol::error(p.id, p.code, p.message));
            return Next::Continue;
        }
    };
    match frame {
        ClientFrame::Ping { id } => ops.push(protocol::pong(id)),
        ClientFrame::Subscribe {
            id,
            group,
            since: Some(since),
        } => match ops.subscribe_since(id, &group, since).await {
            Ok(_) => ops.push(protocol::ack(id)),
            Err(ResumeRefused::NotRecoverable) => ops.push(protocol::error(
                id,
                FrameError::NotRecoverable,
                "this group keeps no history: subscribe without since",
            )),
            Err(ResumeRefused::Subscribe(e)) => ops.push(subscribe_refused(id, e)),
        },
        ClientFrame::Subscribe {
            id,
            group,
            since: None,
        } => match ops.subscribe(&group).await {
            Ok(_) => ops.push(protocol::ack(id)),
            Err(e) => ops.push(subscribe_refused(id, e)),
        },
        ClientFrame::Unsubscribe { id, group } => match ops.unsubscribe(&group) {
            Ok(_) => ops.push(protocol::ack(id)),
            Err(e) => ops.push(protocol::error(id, FrameError::BadName, &e.to_string())),
        },
        ClientFrame::Ack { id, position } => match ack_user(device.as_deref(), position).await {
            Ok(()) => ops.push(protocol::ack(id)),
            Err(AckRefused::NoDevice) => ops.push(protocol::error(
                id,
                FrameError::BadFrame,
                "ack needs a device: name it in auth (\"device\")",
            )),
            Err(AckRefused::Unavailable) => ops.push(protocol::error(
                id,
                FrameError::HistoryUnavailable,
                "history unavailable: the acknowledgement was not kept",
            )),
        },
        ClientFrame::Refresh { id, token } => match ops.refresh(&token) {
            Ok(()) => ops.push(protocol::ack(id)),
            Err(RefreshRefused::OtherUser) => return Next::Close(CloseCode::RefreshMismatch),
            Err(RefreshRefused::Invalid(e)) => {
                ops.push(protocol::error(id, FrameError::BadToken, &e.to_string()))
            }
        },
        ClientFrame::Auth { .. } => ops.push(protocol::error(
            0,
            FrameError::BadFrame,
            "already authenticated",
        )),
    }
    Next::Continue
}

/// The error frame of a refused subscription.
fn subscribe_refused(id: u64, e: SubscribeRefused) -> Bytes {
    match e {
        SubscribeRefused::BadName(e) => protocol::error(id, FrameError::BadName, &e.to_string()),
        SubscribeRefused::NotAllowed => protocol::error(
            id,
            FrameError::NotAllowed,
            "the token's channels claim does not allow this group",
        ),
        SubscribeRefused::TooMany => protocol::error(
            id,
            FrameError::TooManyGroups,
            "too many groups on this connection",
        ),
    }
}
