//! What a client speaks over the WebSocket: a [`Codec`] turns data frames into [`Event`]s and
//! writes the protocol's own frames (subscriptions, its pongs). The WebSocket itself (upgrade,
//! framing, pings, close) is the [`Conn`](super::Conn)'s.
//!
//! A codec is per connection and small: a state byte, and whatever it must hold until the
//! subscription is done. One for each protocol: [`Herald`](super::herald::Herald) (`herald.v1`),
//! [`Mqtt`](super::mqtt::Mqtt) (3.1.1), [`Stomp`](super::stomp::Stomp) (1.2),
//! [`Nats`](super::nats::Nats), [`Plain`](super::plain::Plain) frames.

use super::End;

/// What a client learns from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Connected and subscribed (or welcomed, without a subscription): the handshake of the
    /// protocol is over.
    Ready,
    /// A delivered message: the whole `msg` frame for herald.v1, the payload for the others.
    Message(&'a [u8]),
    /// The server pinged (WebSocket or protocol ping); the pong is on its way.
    Ping,
}

/// Who a connection is and what it subscribes to, for its upgrade and its first frames.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// Herald project (`/ws/<project>`).
    pub project: &'a str,
    /// Its token (herald.v1: in the query), dropped after the handshake.
    pub token: &'a str,
    /// Group / topic / subject to subscribe to (`None`: no subscription).
    pub topic: Option<&'a str>,
}

/// A protocol spoken over the WebSocket.
pub trait Codec: Send + 'static {
    /// Whether the codec reads a Server-Sent Events stream (`GET`, `200`, events) instead of a
    /// WebSocket; such a codec never writes.
    const EVENT_STREAM: bool = false;

    /// `Sec-WebSocket-Protocol` to ask for.
    const SUBPROTOCOL: Option<&'static str> = None;

    /// The path (and query) of the upgrade request.
    fn path(&self, hello: &Hello<'_>) -> String;

    /// The upgrade is done: appends first frames to `out` (with
    /// [`frame::push`](super::frame::push)), and may already be ready.
    fn opened(&mut self, hello: &Hello<'_>, out: &mut Vec<u8>, on: &mut impl FnMut(Event<'_>));

    /// One whole data frame (text or binary) from the server.
    fn data(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), End>;
}
