//! Client protocols as codecs over one session layer.
//!
//! Admission, the session (hub membership, limits, queue, liveness, metrics) and the WebSocket
//! transport are shared; a codec only turns the protocol's frames into session operations and
//! the session's events into the protocol's frames:
//! - [`Codec::hello`]: the protocol's connect frame (native `auth`, MQTT `CONNECT`, STOMP
//!   `CONNECT`), giving the token and, where the protocol carries it, the project; a frame that
//!   cannot be read is a [`HelloRefused`] with the protocol's own answer;
//! - [`Codec::welcome`] / [`Codec::refusal`]: the answer to it;
//! - [`Codec::started`]: what the protocol does once the connection is in the hub (MQTT: the
//!   session takeover by client id, `CONNACK`);
//! - [`Codec::on_message`]: a client frame of a live session, acted on through [`SessionOps`];
//! - [`Codec::render`]: the frames just taken from the hub, completed per connection where the
//!   protocol needs it (packet ids, subscription ids), before they are written;
//! - [`Codec::closing`]: what to send before a server-initiated close.
//!
//! Delivery is encoded once per wire and transport framing ([`encode_form`]): every recipient
//! taking the same [`Form`] gets the same bytes. Transports ([`crate::transport`]: WebSocket,
//! Server-Sent Events, SockJS) are below the codecs: a codec never knows which one carries it.
//!
//! [`SessionOps`]: crate::session::SessionOps

pub mod mqtt;
pub(crate) mod native;
pub mod stomp;

use std::collections::VecDeque;

use bytes::Bytes;
use herald_core::codes::CloseCode;
use herald_core::ids::ProjectId;
use herald_core::proto::bus::Envelope;
use tokio_tungstenite::tungstenite::Message;

use crate::config::EdgeConfig;
use crate::hub::ConnHandle;
use crate::session::{Next, SessionOps};
use crate::transport::Framing;

/// The protocol a connection speaks, chosen at the upgrade (path and sub-protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Wire {
    /// `herald.v1` (JSON text frames), the default.
    #[default]
    Native = 0,
    /// MQTT 3.1.1 and 5.0 over WebSocket.
    Mqtt = 1,
    /// STOMP 1.0-1.2 over WebSocket.
    Stomp = 2,
}

impl Wire {
    /// How many wires there are (for per-wire tables).
    pub const COUNT: usize = 3;

    /// A label for metrics (`protocol`).
    pub fn label(self) -> &'static str {
        match self {
            Wire::Native => "native",
            Wire::Mqtt => "mqtt",
            Wire::Stomp => "stomp",
        }
    }

    /// The WebSocket sub-protocols selecting this wire on `/ws/{project}`, in order of
    /// preference. A wire whose codec this edge lacks has none.
    pub fn sub_protocols(self) -> &'static [&'static str] {
        match self {
            Wire::Native => &[crate::protocol::NATIVE_PROTOCOL],
            Wire::Mqtt => &["mqtt", "mqttv3.1"],
            Wire::Stomp => &["v12.stomp", "v11.stomp", "v10.stomp"],
        }
    }

    /// Whether this edge speaks the wire at all.
    pub fn available(self) -> bool {
        !self.sub_protocols().is_empty()
    }

    /// Whether a token in the upgrade request (header, query, client certificate) stands alone:
    /// the native protocol then has no connect frame; MQTT and STOMP always send one.
    pub fn token_in_request(self) -> bool {
        self == Wire::Native
    }
}

/// The protocol a connection speaks and the form in which it takes delivered messages from the
/// hub (one byte in the hub's connection state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Form {
    /// `herald.v1`: the native frame.
    Native = Wire::Native as u8,
    /// MQTT: the template ([`encode`]) that [`Codec::render`] completes per connection (packet
    /// identifiers, per-subscription QoS, maximum packet size).
    Mqtt = Wire::Mqtt as u8,
    /// STOMP: the template that [`Codec::render`] completes per subscription.
    Stomp = Wire::Stomp as u8,
    /// MQTT 3.1.1, the finished `PUBLISH` at QoS 0, the same bytes for every such recipient
    /// ([`mqtt::delivery::qos0_frame`]): for a connection that receives every message at QoS 0
    /// with no limit on its size, nothing is left to complete.
    MqttV3Qos0 = 3,
    /// The same over MQTT 5.0.
    MqttV5Qos0 = 4,
    /// `herald.v1` over Server-Sent Events: the `data:` event, or for a recoverable stream the
    /// template each connection finishes with its `id:` line ([`crate::sse::message_event`]).
    NativeSse = 5,
}

/// The `protocol` label values of the edge's metrics: each wire's over WebSocket, then `sse`.
pub const PROTOCOL_LABELS: [&str; 4] = ["native", "mqtt", "stomp", "sse"];

impl Form {
    /// A connection's form until its codec chooses another: its wire's encoding in its
    /// transport's framing (a wire a transport does not carry keeps its WebSocket form).
    pub(crate) fn of(wire: Wire, framing: Framing) -> Self {
        match (wire, framing) {
            (Wire::Native, Framing::EventStream) => Form::NativeSse,
            (Wire::Native, _) => Form::Native,
            (Wire::Mqtt, _) => Form::Mqtt,
            (Wire::Stomp, _) => Form::Stomp,
        }
    }

    /// The protocol.
    pub(crate) fn wire(self) -> Wire {
        match self {
            Form::Native | Form::NativeSse => Wire::Native,
            Form::Mqtt | Form::MqttV3Qos0 | Form::MqttV5Qos0 => Wire::Mqtt,
            Form::Stomp => Wire::Stomp,
        }
    }

    /// Its index in [`PROTOCOL_LABELS`]: the wire's over WebSocket, the transport's otherwise.
    pub(crate) fn label_index(self) -> usize {
        match self {
            Form::NativeSse => 3,
            f => f.wire() as usize,
        }
    }

    /// The `protocol` label of its connections' metrics.
    pub(crate) fn label(self) -> &'static str {
        PROTOCOL_LABELS[self.label_index()]
    }
}

/// How a connection takes delivered messages, in one byte of the hub's connection state: its
/// [`Form`], whether it negotiated `permessage-deflate` (it then gets the compressed variant
/// of finished forms, [`Frames::get`]), and whether its transport is one-way
/// ([`Framing::one_way`]: pings go as heartbeats, no pong expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Takes(u8);

impl Takes {
    /// The bit saying the connection negotiated `permessage-deflate`.
    const DEFLATE: u8 = 0x80;
    /// The bit saying the client cannot answer pings.
    const ONE_WAY: u8 = 0x40;
    /// The bits of the form.
    const FORM: u8 = 0x3f;

    /// Messages in `form`, compressed where `deflate`, over a transport framed as `framing`.
    pub(crate) fn new(form: Form, deflate: bool, framing: Framing) -> Self {
        let mut b = form as u8;
        if deflate {
            b |= Self::DEFLATE;
        }
        if framing.one_way() {
            b |= Self::ONE_WAY;
        }
        Self(b)
    }

    /// The form.
    pub(crate) fn form(self) -> Form {
        match self.0 & Self::FORM {
            0 => Form::Native,
            1 => Form::Mqtt,
            2 => Form::Stomp,
            3 => Form::MqttV3Qos0,
            4 => Form::MqttV5Qos0,
            _ => Form::NativeSse,
        }
    }

    /// Whether the connection negotiated `permessage-deflate`.
    pub(crate) fn deflate(self) -> bool {
        self.0 & Self::DEFLATE != 0
    }

    /// Whether the client cannot answer pings (a one-way transport).
    pub(crate) fn one_way(self) -> bool {
        self.0 & Self::ONE_WAY != 0
    }

    /// The protocol.
    pub(crate) fn wire(self) -> Wire {
        self.form().wire()
    }

    /// The same with another form (the extension and the transport stay).
    pub(crate) fn with_form(self, form: Form) -> Self {
        Self(form as u8 | (self.0 & !Self::FORM))
    }
}

/// What a protocol's connect frame gives.
pub(crate) struct Hello {
    /// The token, when the frame carries one (otherwise the request's, if any).
    pub(crate) token: Option<String>,
    /// The project, when the protocol names it (MQTT on `/mqtt`: the username).
    pub(crate) project: Option<ProjectId>,
    /// The codec's state for the session.
    pub(crate) codec: Codec,
    /// Streams the client resumes (native `auth` with `resume`).
    pub(crate) resume: Vec<crate::protocol::Since>,
    /// The device the client names (native `auth` with `device`).
    pub(crate) device: Option<String>,
}

/// A connect frame refused: the close code and the protocol's own answer before the close.
pub(crate) struct HelloRefused {
    /// The close code.
    pub(crate) code: CloseCode,
    /// What to send before the close frame.
    pub(crate) answer: Option<Bytes>,
}

impl HelloRefused {
    /// A refusal with the close frame alone.
    pub(crate) fn close(code: CloseCode) -> Self {
        Self { code, answer: None }
    }
}

/// Reads a protocol's connect frame from the client's first data messages: one for most, as
/// many as it takes for an MQTT `CONNECT` (packets may span WebSocket messages).
pub(crate) enum HelloReader {
    /// The connect frame is the first message.
    Once(Wire),
    /// An MQTT `CONNECT`, possibly in pieces.
    Mqtt(mqtt::client::ConnectReader),
    /// A STOMP `CONNECT`, answered with the edge's frame limits and heart-beat.
    Stomp(stomp::codec::StompConfig),
}

impl HelloReader {
    /// A reader for `wire` under the edge's settings (`max_message_bytes` bounds the connect
    /// frame; `ping_interval_secs` is the STOMP heart-beat offered).
    pub(crate) fn new(wire: Wire, cfg: &EdgeConfig) -> Self {
        match wire {
            Wire::Mqtt => {
                HelloReader::Mqtt(mqtt::client::ConnectReader::new(cfg.max_message_bytes))
            }
            Wire::Stomp => HelloReader::Stomp(stomp::codec::StompConfig::from_edge(cfg)),
            w => HelloReader::Once(w),
        }
    }

    /// Takes one client data message; `None` while the connect frame is incomplete.
    pub(crate) fn feed(&mut self, m: Message) -> Option<Result<Hello, HelloRefused>> {
        match self {
            HelloReader::Once(w) => Some(Codec::hello(*w, m)),
            HelloReader::Mqtt(r) => r.feed(m),
            HelloReader::Stomp(c) => Some(stomp::codec::hello(m, c)),
        }
    }
}

/// What a welcome says.
pub(crate) struct Welcome<'a> {
    /// The connection's public id.
    pub(crate) connection_id: &'a str,
    /// The user.
    pub(crate) user: &'a str,
    /// The groups joined from the token.
    pub(crate) groups: &'a [&'a str],
    /// The server's ping interval.
    pub(crate) ping_interval_secs: u64,
    /// The token's expiry, Unix seconds.
    pub(crate) expires_unix: u64,
}

/// A live connection's protocol state.
pub(crate) enum Codec {
    /// `herald.v1`: no state beyond the session's, but the device of a client that names one.
    Native(Option<Box<crate::device::Device>>),
    /// MQTT 3.1, 3.1.1 and 5.0.
    Mqtt(Box<mqtt::client::Mqtt>),
    /// STOMP 1.0, 1.1 and 1.2.
    Stomp(Box<stomp::codec::StompCodec>),
}

impl Codec {
    /// The codec of a client whose token came with the request and that sends no connect frame.
    pub(crate) fn plain(wire: Wire) -> Self {
        debug_assert!(wire.token_in_request());
        Codec::Native(None)
    }

    /// The protocol this codec speaks.
    pub(crate) fn wire(&self) -> Wire {
        match self {
            Codec::Native(_) => Wire::Native,
            Codec::Mqtt(_) => Wire::Mqtt,
            Codec::Stomp(_) => Wire::Stomp,
        }
    }

    /// The protocol's own keep alive, in seconds (0: none; the hub's pings keep the connection).
    /// With one, the hub sends no pings and closes the connection after 1.5 times it without a
    /// frame from the client.
    pub(crate) fn keep_alive_secs(&self) -> u16 {
        match self {
            Codec::Native(_) => 0,
            Codec::Mqtt(m) => m.keep_alive(),
            Codec::Stomp(s) => secs(s.heart_beat().expect_ms),
        }
    }

    /// Seconds between the heart-beats the hub sends the client ([`heart_beat_frame`]), 0: none.
    pub(crate) fn heart_beat_secs(&self) -> u8 {
        match self {
            Codec::Native(_) | Codec::Mqtt(_) => 0,
            // A client asking for rarer heart-beats than every 255 s gets them more often.
            Codec::Stomp(s) => secs(s.heart_beat().send_ms).min(255) as u8,
        }
    }

    /// The connection of this edge that this one takes over once started (MQTT: the holder of
    /// its client id in `project`): the per-user cap counts it as replaced, not as another device.
    pub(crate) fn takes_over(
        &self,
        ids: &mqtt::takeover::ClientIds,
        project: &ProjectId,
    ) -> Option<ConnHandle> {
        match self {
            Codec::Native(_) | Codec::Stomp(_) => None,
            Codec::Mqtt(m) => m.takes_over(ids, project),
        }
    }

    /// Reads the protocol's connect frame from the first data message after the upgrade.
    pub(crate) fn hello(wire: Wire, first: Message) -> Result<Hello, HelloRefused> {
        match wire {
            Wire::Native => native::hello(first).map_err(HelloRefused::close),
            Wire::Mqtt => HelloReader::new(wire, &EdgeConfig::default())
                .feed(first)
                .unwrap_or(Err(HelloRefused::close(CloseCode::ProtocolError))),
            Wire::Stomp => stomp::codec::hello(first, &stomp::codec::StompConfig::default()),
        }
    }

    /// The answer to an accepted connect (empty when [`Codec::started`] answers).
    pub(crate) fn welcome(&mut self, w: &Welcome<'_>) -> Bytes {
        match self {
            Codec::Native(_) => native::welcome(w),
            Codec::Mqtt(_) => Bytes::new(),
            Codec::Stomp(s) => s.welcome(w.connection_id, w.user, w.groups),
        }
    }

    /// Runs once the connection is in the hub and its welcome queued.
    pub(crate) async fn started(&mut self, ops: &mut SessionOps<'_>) -> Next {
        match self {
            Codec::Native(_) => Next::Continue,
            Codec::Mqtt(m) => m.started(ops).await,
            Codec::Stomp(_) => Next::Continue,
        }
    }

    /// The protocol's answer to a refused connect, sent before the close frame.
    pub(crate) fn refusal(&mut self, code: CloseCode) -> Option<Bytes> {
        match self {
            Codec::Native(_) => {
                let _ = code;
                None
            }
            Codec::Mqtt(m) => m.refusal(code),
            Codec::Stomp(s) => Some(s.refusal(code)),
        }
    }

    /// Handles one client data message of a live session.
    pub(crate) async fn on_message(&mut self, ops: &mut SessionOps<'_>, m: Message) -> Next {
        match self {
            Codec::Native(d) => native::on_message(ops, d, m).await,
            Codec::Mqtt(c) => c.on_message(ops, m).await,
            Codec::Stomp(s) => stomp::codec::on_message(s, ops, m).await,
        }
    }

    /// Completes the frames just taken from the hub for this connection; `Some(code)` when the
    /// connection must close instead.
    #[inline]
    pub(crate) fn render(&mut self, frames: &mut VecDeque<Bytes>) -> Option<CloseCode> {
        match self {
            Codec::Native(_) => {
                let _ = frames;
                None
            }
            Codec::Mqtt(m) => m.render(frames),
            Codec::Stomp(s) => s.render(frames).err().map(|_| CloseCode::SlowConsumer),
        }
    }

    /// What to send before the server closes the connection with `code`.
    pub(crate) fn closing(&mut self, code: CloseCode, reconnect_after_ms: u32) -> Option<Bytes> {
        match self {
            Codec::Native(_) => native::closing(code, reconnect_after_ms),
            Codec::Mqtt(m) => m.closing(code),
            Codec::Stomp(s) => s.closing(code, reconnect_after_ms),
        }
    }
}

/// Encodes a delivered message for every recipient taking messages in `form` (MQTT's QoS 0
/// forms: the template, which [`Codec::render`] completes).
pub(crate) fn encode_form(form: Form, env: &Envelope) -> Bytes {
    match form {
        Form::NativeSse => crate::sse::message_event(env),
        f => encode(f.wire(), env),
    }
}

/// Encodes a delivered message for every recipient speaking `wire` over WebSocket.
pub(crate) fn encode(wire: Wire, env: &Envelope) -> Bytes {
    match wire {
        Wire::Mqtt => mqtt::delivery::template(env),
        Wire::Native => crate::frame::message_frame(env),
        // Kinds STOMP cannot receive never get here (the hub drops unspecified targets).
        Wire::Stomp => stomp::message::encode(env).unwrap_or_default(),
    }
}

/// A delivered message's frames, made on first use: one per protocol and form among its
/// recipients, each shared by all of them; and, for recipients that negotiated
/// `permessage-deflate`, the compressed variant of each finished form (compressed once).
pub(crate) struct Frames<'a> {
    env: &'a Envelope,
    by_wire: [Option<Bytes>; Wire::COUNT],
    /// [`Form::MqttV3Qos0`] and [`Form::MqttV5Qos0`], from the MQTT template.
    mqtt_qos0: [Option<Bytes>; 2],
    /// The compressed variants of [`Form::Native`], [`Form::MqttV3Qos0`] and
    /// [`Form::MqttV5Qos0`] (the plain frame again where deflate does not make it smaller).
    deflated: [Option<Bytes>; 3],
    /// [`Form::NativeSse`].
    sse: Option<Bytes>,
}

impl<'a> Frames<'a> {
    /// No frame made yet for `env`.
    pub(crate) fn new(env: &'a Envelope) -> Self {
        Self {
            env,
            by_wire: Default::default(),
            mqtt_qos0: Default::default(),
            deflated: Default::default(),
            sse: None,
        }
    }

    /// The message.
    pub(crate) fn env(&self) -> &'a Envelope {
        self.env
    }

    /// The frame for a connection that takes messages as `takes` says: compressed when it
    /// negotiated `permessage-deflate` and its form is finished: the templates MQTT and STOMP
    /// complete per connection ([`Codec::render`]) go uncompressed, as the extension allows for
    /// any message.
    pub(crate) fn get(&mut self, takes: Takes) -> &Bytes {
        let form = takes.form();
        let i = match form {
            _ if !takes.deflate() => return self.plain(form),
            Form::Native => 0,
            Form::MqttV3Qos0 => 1,
            Form::MqttV5Qos0 => 2,
            // Server-Sent Events never negotiate the extension.
            Form::Mqtt | Form::Stomp | Form::NativeSse => return self.plain(form),
        };
        if self.deflated[i].is_none() {
            let plain = self.plain(form);
            let z = crate::deflate::deflate_frame(plain).unwrap_or_else(|| plain.clone());
            self.deflated[i] = Some(z);
        }
        self.deflated[i].get_or_insert_default()
    }

    /// The uncompressed frame for a connection that takes messages in `form`.
    fn plain(&mut self, form: Form) -> &Bytes {
        let env = self.env;
        let by_wire = &mut self.by_wire;
        let v5 = match form {
            Form::Native | Form::Mqtt | Form::Stomp => {
                let wire = form.wire();
                return by_wire[wire as usize].get_or_insert_with(|| encode(wire, env));
            }
            Form::MqttV3Qos0 => false,
            Form::MqttV5Qos0 => true,
            Form::NativeSse => {
                return self
                    .sse
                    .get_or_insert_with(|| encode_form(Form::NativeSse, env));
            }
        };
        self.mqtt_qos0[v5 as usize].get_or_insert_with(|| {
            let t = by_wire[Wire::Mqtt as usize].get_or_insert_with(|| encode(Wire::Mqtt, env));
            mqtt::delivery::qos0_frame(t, v5)
        })
    }
}

/// The heart-beat frame a protocol's client gets every [`Codec::heart_beat_secs`].
pub(crate) fn heart_beat_frame(wire: Wire) -> Option<Bytes> {
    match wire {
        Wire::Stomp => Some(stomp::encode::heart_beat_frame()),
        Wire::Native | Wire::Mqtt => None,
    }
}

/// Milliseconds as whole seconds for the hub's one-second tick, rounded up; 0 stays 0.
fn secs(ms: u32) -> u16 {
    ms.div_ceil(1000).min(u32::from(u16::MAX)) as u16
}

#[cfg(test)]
mod takes_tests {
    use super::{Form, Framing, Takes};

    #[test]
    fn every_form_round_trips_through_one_byte() {
        for form in [
            Form::Native,
            Form::Mqtt,
            Form::Stomp,
            Form::MqttV3Qos0,
            Form::MqttV5Qos0,
            Form::NativeSse,
        ] {
            for deflate in [false, true] {
                for framing in [Framing::WebSocket, Framing::EventStream, Framing::SockJsXhr] {
                    let t = Takes::new(form, deflate, framing);
                    assert_eq!(
                        (t.form(), t.deflate(), t.one_way()),
                        (form, deflate, framing.one_way())
                    );
                    let other = t.with_form(Form::Stomp);
                    assert_eq!(
                        (other.form(), other.deflate(), other.one_way()),
                        (Form::Stomp, deflate, framing.one_way())
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    /// A live connection's protocol state is allocated once per connection: keep each within its
    /// jemalloc size class (idle RSS per connection, benches/README.md).
    #[test]
    fn codec_state_stays_small() {
        let mqtt = size_of::<super::mqtt::client::Mqtt>();
        assert!(mqtt <= 128, "MQTT codec grew to {mqtt} bytes");
        // The shared outbound state, with the `Arc` counts and the lock.
        let out = size_of::<parking_lot::Mutex<super::mqtt::delivery::Outbound>>() + 16;
        assert!(out <= 80, "MQTT outbound state grew to {out} bytes");
        let stomp = size_of::<super::stomp::codec::StompCodec>();
        assert!(stomp <= 160, "STOMP codec grew to {stomp} bytes");
    }
}
