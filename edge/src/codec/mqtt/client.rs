//! MQTT as a codec over the session layer: `CONNECT` read at hello (the token is the password,
//! the project the user name on `/mqtt`), the session taken over by client id, `SUBSCRIBE` and
//! `UNSUBSCRIBE` mapped to groups, the user's own topic and broadcasts, QoS 1 acknowledgements,
//! `PINGREQ`, `DISCONNECT`, client `PUBLISH` refused, every malformed packet a clear close.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::codes::CloseCode;
use herald_core::history::{HistoryConfig, Position};
use herald_core::ids::{ProjectId, UserId};
use herald_core::proto::bus::TargetKind;
use herald_core::sessions::Sessions;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Message;

use super::delivery::{
    BROADCAST_TOPIC, Delivery, Outbound, USER_TOPIC_PREFIX, is_template, stream_position,
};
use super::encode::{self, ConnAckProperties};
use super::packet::{
    self, Assembler, Connect, DecodeError, Packet, Publish, Subscribe, Unsubscribe, Version,
};
use super::persist::{self, Persist};
use super::reason::{self, ConnectReturn, Reason};
use super::takeover::{Claim, ClientIds, SharedOutbound};
use crate::codec::{Codec, Form, Hello, HelloRefused};
use crate::hub::ConnHandle;
use crate::protocol::StreamOf;
use crate::resume::Answer;
use crate::session::{Next, SessionOps, SubscribeRefused};

/// The longest client id accepted, in bytes.
pub const MAX_CLIENT_ID: usize = 256;

/// A live MQTT connection's protocol state.
pub(crate) struct Mqtt {
    version: Version,
    clean_start: bool,
    keep_alive: u16,
    /// 5.0 session expiry asked for in `CONNECT`.
    session_expiry: u32,
    /// 5.0: reason strings allowed beyond `CONNACK` and `DISCONNECT`.
    problem_info: bool,
    receive_maximum: u16,
    client_max_packet: Option<u32>,
    /// The client id (empty until one is assigned), held on the edge once started.
    client_id: ClientId,
    /// The largest packet accepted from the client.
    max_packet: u32,
    asm: Assembler,
    /// Packets that came behind `CONNECT` in its WebSocket message (rare: boxed).
    pending: Option<Box<Bytes>>,
    out: Option<SharedOutbound>,
    /// The `DISCONNECT` to send before a close this codec decided.
    /// What few connections need (the last `DISCONNECT`, a persistent session), boxed.
    rare: Option<Box<Rare>>,
    /// The client sent `DISCONNECT`: the server sends none.
    client_disconnected: bool,
    /// WebSocket messages taken since the last complete packet (mqtt.js sends a packet's
    /// fields as messages of their own): what a `PUBACK` gives back to the frame rate.
    pieces: u8,
    /// The form in which the hub queues this connection's messages.
    form: Form,
}

/// The parts of an MQTT connection's state that few connections need.
#[derive(Default)]
struct Rare {
    /// The `DISCONNECT` to send before a close this codec decided.
    disconnect: Option<Bytes>,
    /// The persistent session, for a client that asked for one.
    persist: Option<Persist>,
}

/// A connection's client id: as the client gave it until the connection starts, then held in
/// the edge's client ids (released when the connection ends).
enum ClientId {
    Given(Arc<str>),
    Held(Claim),
}

impl ClientId {
    fn get(&self) -> &Arc<str> {
        match self {
            ClientId::Given(id) => id,
            ClientId::Held(c) => &c.client_id,
        }
    }
}

fn count_malformed(e: &DecodeError) {
    metrics::counter!("herald_edge_mqtt_malformed_total", "reason" => e.label()).increment(1);
}

/// Reads `CONNECT` across as many WebSocket messages as it takes (mqtt.js under Node sends each
/// field of a packet as its own message).
pub(crate) struct ConnectReader {
    asm: Assembler,
    max_packet: u32,
}

impl ConnectReader {
    /// A reader accepting a `CONNECT` of at most `max_packet` bytes.
    pub(crate) fn new(max_packet: usize) -> Self {
        Self {
            asm: Assembler::default(),
            max_packet: u32::try_from(max_packet).unwrap_or(u32::MAX),
        }
    }

    /// Takes one client message; `None` while the `CONNECT` is incomplete.
    pub(crate) fn feed(&mut self, m: Message) -> Option<Result<Hello, HelloRefused>> {
        let Message::Binary(mut data) = m else {
            metrics::counter!("herald_edge_mqtt_malformed_total", "reason" => "text_frame")
                .increment(1);
            return Some(Err(HelloRefused::close(CloseCode::ProtocolError)));
        };
        match self.asm.next(&mut data, self.max_packet) {
            Ok(Some(pkt)) => Some(connect(pkt, std::mem::take(&mut self.asm), data)),
            Ok(None) => match self.asm.partial_first_byte() {
                Some(b) if b >> 4 != packet::kind::CONNECT => Some(Err(not_connect_first())),
                _ => None,
            },
            Err(e) => {
                count_malformed(&e);
                Some(Err(HelloRefused::close(e.close_code())))
            }
        }
    }
}

fn not_connect_first() -> HelloRefused {
    // No CONNACK may answer a first packet other than CONNECT: only the close.
    metrics::counter!("herald_edge_mqtt_malformed_total", "reason" => "not_connect_first")
        .increment(1);
    HelloRefused::close(CloseCode::ProtocolError)
}

/// The session of a complete first packet `pkt`; `pending` holds what came behind it.
fn connect(pkt: Bytes, asm: Assembler, pending: Bytes) -> Result<Hello, HelloRefused> {
    if packet::packet_type(&pkt) != packet::kind::CONNECT {
        return Err(not_connect_first());
    }
    let c = match packet::parse(&pkt, Version::V3_1_1) {
        Ok(Packet::Connect(c)) => c,
        Ok(_) => return Err(HelloRefused::close(CloseCode::ProtocolError)),
        Err(e) => {
            count_malformed(&e);
            return Err(refuse_connect(&pkt, &e));
        }
    };
    check_connect(&c)?;
    let token = c
        .password
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|t| !t.is_empty());
    let project = c.username.and_then(|u| ProjectId::new(u).ok());
    let codec = Mqtt {
        version: c.version,
        clean_start: c.clean_start,
        keep_alive: c.keep_alive,
        session_expiry: c.session_expiry,
        problem_info: c.request_problem_information,
        receive_maximum: c.receive_maximum,
        client_max_packet: c.maximum_packet_size,
        client_id: ClientId::Given(Arc::from(c.client_id)),
        max_packet: u32::MAX,
        asm,
        pending: (!pending.is_empty()).then(|| Box::new(pending)),
        out: None,
        rare: None,
        client_disconnected: false,
        pieces: 0,
        form: Form::Mqtt,
    };
    Ok(Hello {
        token,
        project,
        codec: Codec::Mqtt(Box::new(codec)),
        resume: Vec::new(),
        device: None,
    })
}

/// The answer to a `CONNECT` that could not be read: 3.1.1's return code 1 for an unknown
/// protocol, a 5.0 `CONNACK` with the reason when the packet says it is 5.0, else the close alone.
fn refuse_connect(pkt: &[u8], e: &DecodeError) -> HelloRefused {
    let code = e.close_code();
    if *e == DecodeError::UnsupportedProtocol {
        let level = connect_level(pkt);
        let answer = if level == Some(5) {
            encode::connack_v5(
                false,
                e.reason(),
                &reason_only("protocol level not supported"),
            )
        } else {
            encode::connack_v3(false, ConnectReturn::UnacceptableProtocolVersion)
        };
        return HelloRefused {
            code,
            answer: Some(answer),
        };
    }
    let answer = (connect_level(pkt) == Some(5))
        .then(|| encode::connack_v5(false, e.reason(), &reason_only(&e.to_string())));
    HelloRefused { code, answer }
}

/// The protocol level byte of a `CONNECT` whose name is `MQTT`, if it can be read.
fn connect_level(pkt: &[u8]) -> Option<u8> {
    let h = packet::fixed_header(pkt, u32::MAX).ok()??;
    let body = pkt.get(h.header_len..)?;
    (body.get(..6)? == b"\x00\x04MQTT")
        .then(|| body.get(6).copied())
        .flatten()
}

fn reason_only(s: &str) -> ConnAckProperties<'_> {
    ConnAckProperties {
        reason_string: Some(s),
        ..Default::default()
    }
}

/// Refusals of a well-formed `CONNECT`: enhanced authentication, a client id Herald does not
/// take.
fn check_connect(c: &Connect<'_>) -> Result<(), HelloRefused> {
    let v5 = c.version.is_v5();
    let refuse = |v3: ConnectReturn, v5_reason: Reason, why: &str, code: CloseCode| HelloRefused {
        code,
        answer: Some(if v5 {
            encode::connack_v5(false, v5_reason, &reason_only(why))
        } else {
            encode::connack_v3(false, v3)
        }),
    };
    if v5 && c.authentication_method.is_some() {
        return Err(refuse(
            ConnectReturn::BadUserNameOrPassword,
            Reason::BadAuthenticationMethod,
            "enhanced authentication is not supported: give the token as the password",
            CloseCode::AuthRequired,
        ));
    }
    if c.client_id.len() > MAX_CLIENT_ID {
        return Err(refuse(
            ConnectReturn::IdentifierRejected,
            Reason::ClientIdentifierNotValid,
            "client id longer than 256 bytes",
            CloseCode::ProtocolError,
        ));
    }
    if c.client_id.is_empty() && !c.clean_start && !v5 {
        return Err(refuse(
            ConnectReturn::IdentifierRejected,
            Reason::ClientIdentifierNotValid,
            "an empty client id needs a clean session",
            CloseCode::ProtocolError,
        ));
    }
    Ok(())
}

/// The outcome of one filter of a `SUBSCRIBE`.
struct Granted {
    code: u8,
    why: Option<&'static str>,
}

impl Mqtt {
    /// The keep alive the client asked for, seconds (0: none).
    pub(crate) fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// The connection of this edge holding this client id in `project`, which this one takes
    /// over once started; none for a client id still to be assigned.
    pub(crate) fn takes_over(&self, ids: &ClientIds, project: &ProjectId) -> Option<ConnHandle> {
        let id = self.client_id.get();
        if id.is_empty() {
            return None;
        }
        ids.holder(project, id)
    }

    fn v5(&self) -> bool {
        self.version.is_v5()
    }

    /// Tells the hub the form this connection takes messages in: the finished QoS 0 `PUBLISH`
    /// shared by every such client while its subscriptions allow ([`Outbound::all_qos0`]), else
    /// the template that [`Mqtt::render`] completes.
    fn sync_form(&mut self, ops: &SessionOps<'_>) {
        let all_qos0 = self.out.as_ref().is_some_and(|o| o.lock().all_qos0());
        let form = match (all_qos0, self.v5()) {
            (false, _) => Form::Mqtt,
            (true, false) => Form::MqttV3Qos0,
            (true, true) => Form::MqttV5Qos0,
        };
        self.set_form(ops, form);
    }

    fn set_form(&mut self, ops: &SessionOps<'_>, form: Form) {
        if form != self.form {
            ops.set_form(form);
            self.form = form;
        }
    }

    /// Before the connection enters the hub: clears or loads the persistent session `CONNECT`
    /// asked for; returns the streams whose live messages are held until their missed ones
    /// were replayed.
    pub(crate) async fn prepare(
        &mut self,
        project: &ProjectId,
        user: &UserId,
        history: Option<&HistoryConfig>,
        sessions: &Arc<dyn Sessions>,
    ) -> Vec<(TargetKind, String)> {
        let asked = persist::Asked {
            v5: self.v5(),
            clean_start: self.clean_start,
            session_expiry: self.session_expiry,
            client_id: self.client_id.get(),
        };
        match persist::open(&asked, project, user, history, sessions).await {
            Some(p) => {
                let held = p.held();
                self.rare_mut().persist = Some(p);
                held
            }
            None => Vec::new(),
        }
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    fn persist(&self) -> Option<&Persist> {
        self.rare.as_deref().and_then(|r| r.persist.as_ref())
    }

    fn persist_mut(&mut self) -> Option<&mut Persist> {
        self.rare.as_deref_mut().and_then(|r| r.persist.as_mut())
    }

    /// A resumed session's subscriptions joined again (under this token's channels) and its
    /// recoverable streams replayed from the last acknowledged offsets.
    async fn resume_session(&mut self, ops: &mut SessionOps<'_>, out: &SharedOutbound) {
        let Some(p) = self.persist_mut() else {
            return;
        };
        let subs = p.record.subscriptions.clone();
        let pending = std::mem::take(&mut p.pending);
        let mut refused = Vec::new();
        for (topic, qos) in &subs {
            if self.subscribe_one(ops, out, topic, *qos).await.code >= 0x80 {
                refused.push(topic.clone());
            }
        }
        for r in pending {
            if refused.contains(&r.topic) {
                ops.abandon_recovery(r.kind, &r.name);
            } else {
                let stream = match r.kind {
                    TargetKind::Group => StreamOf::Group(r.name.clone()),
                    TargetKind::User => StreamOf::User,
                    _ => StreamOf::Broadcast,
                };
                let since = crate::protocol::Position {
                    offset: r.since.offset,
                    epoch: r.since.epoch,
                };
                ops.replay(
                    0,
                    stream,
                    r.kind,
                    r.name,
                    r.key,
                    since,
                    Answer::Mqtt(out.clone()),
                );
            }
        }
        if let Some(p) = self.persist_mut()
            && !refused.is_empty()
        {
            for t in &refused {
                p.unsubscribed(t);
            }
            p.save().await;
        }
    }

    /// The answer to a refused connect (`CONNACK` with the code of `code`).
    pub(crate) fn refusal(&self, code: CloseCode) -> Option<Bytes> {
        if self.v5() {
            let reason = reason::connack_v5(code);
            Some(encode::connack_v5(
                false,
                reason,
                &reason_only(code.reason()),
            ))
        } else {
            reason::connack_v3(code).map(|rc| encode::connack_v3(false, rc))
        }
    }

    /// Once in the hub: takes over an older connection with the same client id, answers
    /// `CONNACK`, sends unacknowledged messages of a resumed session again, and handles packets
    /// that came with `CONNECT`.
    pub(crate) async fn started(&mut self, ops: &mut SessionOps<'_>) -> Next {
        let cfg = ops.config();
        self.max_packet = u32::try_from(cfg.max_message_bytes).unwrap_or(u32::MAX);
        let inflight = cfg.mqtt_max_inflight.min(self.receive_maximum);
        let out = Arc::new(Mutex::new(Outbound::new(
            self.v5(),
            inflight,
            self.client_max_packet,
            cfg.max_queued_bytes,
        )));
        let assigned = self.client_id.get().is_empty();
        let client_id = if assigned {
            Arc::from(ops.connection_id())
        } else {
            self.client_id.get().clone()
        };
        let ids = ops.mqtt_client_ids().clone();
        let previous = ids.claim(ops.project(), &client_id, ops.handle(), &out);
        self.client_id = ClientId::Held(Claim {
            ids,
            project: ops.project().clone(),
            client_id,
            number: ops.handle().number,
        });
        let mut present = false;
        let mut resend = VecDeque::new();
        if let Some(prev) = previous {
            ops.close_other(prev.handle, CloseCode::SessionTakenOver);
            // The older connection keeps an empty state: its late acknowledgements do nothing.
            let old = std::mem::replace(
                &mut *prev.state.lock(),
                Outbound::new(self.v5(), 1, None, 0),
            );
            metrics::counter!(
                "herald_edge_mqtt_takeovers_total",
                "resumed" => if self.clean_start { "false" } else { "true" }
            )
            .increment(1);
            if !self.clean_start {
                present = true;
                let groups: Vec<(String, Delivery)> = {
                    let mut o = out.lock();
                    o.take_over(old);
                    o.groups().map(|(g, d)| (g.to_owned(), d)).collect()
                };
                // The older connection's groups are joined again, under this token's channels.
                for (g, _) in groups {
                    if ops.subscribe(&g).await.is_err() {
                        out.lock().set_group(&g, Delivery::Off);
                    }
                }
                let mut o = out.lock();
                o.resend(&mut resend);
                metrics::counter!("herald_edge_mqtt_resent_total").increment(resend.len() as u64);
            }
        }
        if self.persist().is_some_and(|p| p.present) {
            present = true;
            self.resume_session(ops, &out).await;
            metrics::counter!("herald_edge_mqtt_sessions_resumed_total").increment(1);
        }
        self.out = Some(out);
        self.sync_form(ops);
        let expiry = self.persist().map_or(0, |p| p.expiry_secs());
        ops.push(if self.v5() {
            encode::connack_v5(
                present,
                Reason::Success,
                &ConnAckProperties {
                    // What is kept once the connection is gone (docs/protocol-mqtt.md).
                    session_expiry: (self.session_expiry > 0).then_some(expiry),
                    maximum_packet_size: Some(self.max_packet),
                    assigned_client_id: assigned.then_some(&**self.client_id.get()),
                    capabilities: true,
                    ..Default::default()
                },
            )
        } else {
            encode::connack_v3(present, ConnectReturn::Accepted)
        });
        for f in resend {
            ops.push(f);
        }
        match self.pending.take() {
            Some(pending) => self.input(ops, *pending).await,
            None => Next::Continue,
        }
    }

    /// Handles one client data message.
    pub(crate) async fn on_message(&mut self, ops: &mut SessionOps<'_>, m: Message) -> Next {
        match m {
            Message::Binary(data) => self.input(ops, data).await,
            Message::Text(_) => {
                metrics::counter!("herald_edge_mqtt_malformed_total", "reason" => "text_frame")
                    .increment(1);
                self.close(
                    CloseCode::ProtocolError,
                    Reason::ProtocolError,
                    "MQTT travels in binary frames",
                )
            }
            _ => Next::Continue,
        }
    }

    /// Handles every packet in `data`.
    async fn input(&mut self, ops: &mut SessionOps<'_>, mut data: Bytes) -> Next {
        self.pieces = self.pieces.saturating_add(1);
        loop {
            let pkt = match self.asm.next(&mut data, self.max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => return Next::Continue,
                Err(e) => return self.malformed(&e),
            };
            let pieces = std::mem::take(&mut self.pieces);
            let next = match packet::parse(&pkt, self.version) {
                Ok(p) => self.packet(ops, p, pieces).await,
                Err(e) => self.malformed(&e),
            };
            if let Next::Close(c) = next {
                return Next::Close(c);
            }
        }
    }

    fn malformed(&mut self, e: &DecodeError) -> Next {
        count_malformed(e);
        self.close(e.close_code(), e.reason(), &e.to_string())
    }

    /// Closes with `code`, preceded (5.0) by a `DISCONNECT` with `reason` and `why`.
    fn close(&mut self, code: CloseCode, reason: Reason, why: &str) -> Next {
        if self.v5() {
            self.rare_mut().disconnect = Some(encode::disconnect(reason, Some(why)));
        }
        Next::Close(code)
    }

    /// Handles one packet, which came in `pieces` WebSocket messages.
    async fn packet(&mut self, ops: &mut SessionOps<'_>, p: Packet<'_>, pieces: u8) -> Next {
        match p {
            Packet::Connect(_) => self.close(
                CloseCode::ProtocolError,
                Reason::ProtocolError,
                "a second CONNECT",
            ),
            Packet::Publish(p) => self.publish(ops, &p),
            Packet::PubAck(a) => {
                let mut frames = VecDeque::new();
                let acked = self
                    .out
                    .as_ref()
                    .and_then(|out| out.lock().acked(a.packet_id, &mut frames));
                for f in frames {
                    ops.push(f);
                }
                if acked.is_some() {
                    // It answers a message the server sent: not the client's own traffic.
                    for _ in 0..pieces {
                        ops.acknowledged();
                    }
                }
                if let (Some(p), Some(t)) = (self.persist_mut(), acked)
                    && let Some((kind, topic, offset, epoch)) = stream_position(&t)
                {
                    p.acked(kind, topic, Position { offset, epoch }).await;
                }
                Next::Continue
            }
            Packet::Subscribe(s) => self.subscribe(ops, s).await,
            Packet::Unsubscribe(u) => self.unsubscribe(ops, u).await,
            Packet::PingReq => {
                ops.push(encode::pingresp());
                Next::Continue
            }
            Packet::Disconnect(d) => {
                if self.v5() && self.session_expiry == 0 && d.session_expiry.is_some_and(|n| n > 0)
                {
                    return self.close(
                        CloseCode::ProtocolError,
                        Reason::ProtocolError,
                        "session expiry set at DISCONNECT after 0 at CONNECT",
                    );
                }
                if d.session_expiry == Some(0)
                    && let Some(p) = self.persist_mut()
                {
                    p.end().await;
                }
                self.client_disconnected = true;
                Next::Close(CloseCode::Normal)
            }
            Packet::Unexpected(name) => {
                metrics::counter!("herald_edge_mqtt_malformed_total", "reason" => "unexpected")
                    .increment(1);
                let why = match name {
                    "AUTH" => "AUTH: enhanced authentication is not supported",
                    _ => "Herald never sends QoS 2: PUBREC, PUBREL and PUBCOMP are not expected",
                };
                self.close(CloseCode::ProtocolError, Reason::ProtocolError, why)
            }
        }
    }

    /// Clients only receive: 5.0 QoS 1 and 2 are refused with `PUBACK`/`PUBREC` 0x87 and the
    /// connection stays; 5.0 QoS 0 and every 3.1.1 publish close the connection (4013).
    fn publish(&mut self, ops: &mut SessionOps<'_>, p: &Publish<'_>) -> Next {
        metrics::counter!("herald_edge_mqtt_publishes_refused_total").increment(1);
        const WHY: &str = "clients do not publish: back-ends publish over gRPC";
        match (self.v5(), p.packet_id) {
            (true, Some(id)) => {
                ops.push(encode::publish_refused(p.qos, id, Reason::NotAuthorized));
                Next::Continue
            }
            _ => self.close(CloseCode::PublishNotAllowed, Reason::NotAuthorized, WHY),
        }
    }

    async fn subscribe(&mut self, ops: &mut SessionOps<'_>, s: Subscribe<'_>) -> Next {
        let Some(out) = self.out.clone() else {
            return Next::Continue;
        };
        if s.filters.iter().any(|f| f.qos > 0) {
            // Messages at QoS 1 must be numbered from the first one the hub queues after the join.
            self.set_form(ops, Form::Mqtt);
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut why = None;
        for f in &s.filters {
            let from = match self.persist() {
                Some(p) => {
                    p.position_now(f.topic, f.qos, |t| ops.keeps_target(t), ops.history())
                        .await
                }
                None => None,
            };
            let g = self.subscribe_one(ops, &out, f.topic, f.qos).await;
            if why.is_none() {
                why = g.why;
            }
            if g.code < 0x80
                && let Some(p) = self.persist_mut()
            {
                p.subscribed(f.topic, f.qos, from);
            }
            codes.push(g.code);
        }
        if let Some(p) = self.persist() {
            p.save().await;
        }
        let why = why.filter(|_| self.v5() && self.problem_info);
        self.sync_form(ops);
        ops.push(encode::suback(self.version, s.packet_id, &codes, why));
        Next::Continue
    }

    async fn subscribe_one(
        &mut self,
        ops: &mut SessionOps<'_>,
        out: &SharedOutbound,
        topic: &str,
        qos: u8,
    ) -> Granted {
        let v5 = self.v5();
        let refused = |reason: Reason, label: &'static str, why: &'static str| {
            metrics::counter!("herald_edge_mqtt_subscribes_refused_total", "reason" => label)
                .increment(1);
            Granted {
                code: if v5 { reason.byte() } else { 0x80 },
                why: Some(why),
            }
        };
        let d = Delivery::granted(qos);
        let granted = Granted {
            code: qos.min(1),
            why: None,
        };
        if topic.starts_with("$share/") {
            return refused(
                Reason::SharedSubscriptionsNotSupported,
                "shared",
                "shared subscriptions are not supported",
            );
        }
        if topic.contains(['+', '#']) {
            return refused(
                Reason::WildcardSubscriptionsNotSupported,
                "wildcard",
                "wildcard subscriptions are not supported",
            );
        }
        if topic == BROADCAST_TOPIC {
            out.lock().set_broadcast(d);
            return granted;
        }
        if let Some(user) = topic.strip_prefix(USER_TOPIC_PREFIX) {
            if user != ops.user().as_str() {
                return refused(
                    Reason::NotAuthorized,
                    "other_user",
                    "user/{sub} is only the connection's own user",
                );
            }
            out.lock().set_user(d);
            return granted;
        }
        match ops.subscribe(topic).await {
            Ok(_) => {
                out.lock().set_group(topic, d);
                granted
            }
            Err(SubscribeRefused::BadName(_)) => refused(
                Reason::TopicFilterInvalid,
                "bad_name",
                "not a group name ([A-Za-z0-9_@=/-], 1-128 bytes)",
            ),
            Err(SubscribeRefused::NotAllowed) => refused(
                Reason::NotAuthorized,
                "not_allowed",
                "the token's channels claim does not allow this group",
            ),
            Err(SubscribeRefused::TooMany) => refused(
                Reason::QuotaExceeded,
                "too_many_groups",
                "too many groups on this connection",
            ),
        }
    }

    async fn unsubscribe(&mut self, ops: &mut SessionOps<'_>, u: Unsubscribe<'_>) -> Next {
        let Some(out) = self.out.clone() else {
            return Next::Continue;
        };
        let mut codes = Vec::with_capacity(u.filters.len());
        for topic in &u.filters {
            let code = if *topic == BROADCAST_TOPIC {
                out.lock().set_broadcast(Delivery::Off);
                Reason::Success
            } else if topic
                .strip_prefix(USER_TOPIC_PREFIX)
                .is_some_and(|u| u == ops.user().as_str())
            {
                out.lock().set_user(Delivery::Off);
                Reason::Success
            } else {
                match ops.unsubscribe(topic) {
                    Ok(was) => {
                        out.lock().set_group(topic, Delivery::Off);
                        if was {
                            Reason::Success
                        } else {
                            Reason::NoSubscriptionExisted
                        }
                    }
                    Err(_) => Reason::TopicFilterInvalid,
                }
            };
            codes.push(code.byte());
        }
        self.sync_form(ops);
        if let Some(p) = self.persist_mut() {
            for topic in &u.filters {
                p.unsubscribed(topic);
            }
            p.save().await;
        }
        ops.push(encode::unsuback(self.version, u.packet_id, &codes));
        Next::Continue
    }

    /// Completes the frames taken from the hub: `PUBLISH` per this connection's QoS and window.
    /// `Some(code)` when the connection must close (its QoS 1 messages waiting overflowed).
    pub(crate) fn render(&mut self, frames: &mut VecDeque<Bytes>) -> Option<CloseCode> {
        // Finished frames (the QoS 0 form, pings, answers) need no lock and no pass.
        if !frames.iter().any(|f| is_template(f)) {
            return None;
        }
        let out = self.out.as_ref()?;
        match out.lock().render(frames) {
            Ok(d) => {
                if d.unsubscribed > 0 {
                    metrics::counter!("herald_edge_mqtt_dropped_total", "reason" => "unsubscribed")
                        .increment(u64::from(d.unsubscribed));
                }
                if d.too_large > 0 {
                    metrics::counter!("herald_edge_mqtt_dropped_total", "reason" => "too_large")
                        .increment(u64::from(d.too_large));
                }
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "mqtt client too slow to acknowledge");
                metrics::counter!("herald_edge_slow_consumers_total").increment(1);
                Some(CloseCode::SlowConsumer)
            }
        }
    }

    /// What to send before the server closes: a 5.0 `DISCONNECT` (none in 3.1.1, none after the
    /// client's own `DISCONNECT`).
    pub(crate) fn closing(&mut self, code: CloseCode) -> Option<Bytes> {
        if !self.v5() || self.client_disconnected {
            return None;
        }
        self.rare
            .as_mut()
            .and_then(|r| r.disconnect.take())
            .or_else(|| {
                Some(encode::disconnect(
                    reason::disconnect_v5(code),
                    Some(code.reason()),
                ))
            })
    }
}
