//! The edge's settings: one serde struct, every field documented with its default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::listener::ListenerConfig;

/// Settings of an edge node (`[edge]` in the TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id, unique in a cluster (`[a-z0-9_-]`). Default `"edge-1"`.
    pub id: String,
    /// Address of the `ws` listener. Default `0.0.0.0:8080`. Not used when `listeners` is given.
    pub listen: SocketAddr,
    /// The listeners, each with its own address, TLS, PROXY protocol and trusted proxies
    /// (`[[edge.listeners]]`). Default empty: one plain `ws` listener on `listen`.
    pub listeners: Vec<ListenerConfig>,
    /// Deadline for the HTTP upgrade request, in milliseconds. Default 10,000.
    pub handshake_timeout_ms: u64,
    /// Deadline for the `auth` frame when no token came with the upgrade, in ms. Default 10,000.
    pub auth_timeout_ms: u64,
    /// Idle time after which the server pings a connection, in seconds. Default 25.
    pub ping_interval_secs: u64,
    /// Time a ping may stay unanswered before the connection closes (4006), in seconds, from when
    /// the edge hands it to the socket. Default 20.
    pub pong_timeout_secs: u64,
    /// Largest message a client may send, in bytes (larger: close 1009). Default 65,536.
    pub max_message_bytes: usize,
    /// Largest single frame a client may send, in bytes (larger: close 1009); 0: the same as
    /// `max_message_bytes`. Default 0.
    pub max_frame_bytes: usize,
    /// Most bytes queued for one connection before it closes as a slow consumer (4008); 1,024
    /// to 1 GiB. Default 1,048,576.
    pub max_queued_bytes: usize,
    /// Initial read buffer of a WebSocket connection, in bytes, while the client's frames are
    /// read; it grows for larger frames, and an idle connection holds none. Default 128.
    pub read_buffer_bytes: usize,
    /// Most groups one connection may be in. Default 256.
    pub max_groups_per_connection: usize,
    /// Refuse failed authentication with HTTP 401/403/404 before the upgrade, instead of
    /// accepting and closing with a 4xxx code (cheaper under attack; browsers cannot read it).
    /// Default false.
    pub refuse_before_upgrade: bool,
    /// Clock skew tolerated on `exp`, in seconds. Default 5.
    pub token_leeway_secs: u64,
    /// Hub shards; 0 picks four per core. Default 0.
    pub shards: usize,
    /// On shutdown, clients are told to wait a random delay up to this many ms before
    /// reconnecting. Default 5,000.
    pub reconnect_jitter_ms: u32,
    /// How long a closing connection may take to flush its close frame, in ms. Default 3,000.
    pub close_timeout_ms: u64,
    /// How long a connect (before `welcome`) or a join (before `ack`) waits for the registry to
    /// hold its interest, in ms; past it the client is answered anyway and the write goes on in
    /// the background (docs/cluster.md). Default 5,000.
    pub registration_timeout_ms: u64,
    /// How often the edge asks history where its recoverable streams stand, so a lost last
    /// message is found and passed on; 0: never. Default 5.
    pub history_check_secs: u64,
    /// Most interest changes waiting to be written to the registry; past it they are dropped
    /// and the edge's whole interest is written again instead (counted in
    /// `herald_edge_interest_overflows_total`). Default 100,000.
    pub max_pending_interest: usize,
    /// Writes of interest changes to the registry start at most once per this many ms, so a
    /// connect storm costs one round trip per interval, not one per few connects; a change
    /// after a quiet spell is written at once. 0: a write as soon as the previous one is done.
    /// Default 15.
    pub registry_batch_ms: u64,
    /// The write window, in ms: a delivery to a connection with nothing queued wakes its task
    /// at the end of the window (begun by the first such delivery on the edge), so the
    /// messages of the window leave in one write; 0: written at once. At most 100. Default 5.
    pub write_window_ms: u64,
    /// Most QoS 1 messages sent to one MQTT client and not yet acknowledged; a smaller receive
    /// maximum of the client (5.0) lowers it. Further QoS 1 messages wait (counted against
    /// `max_queued_bytes`). Default 32.
    pub mqtt_max_inflight: u16,
    /// SockJS over HTTP: how long a session may have no receiving request (a polling client
    /// between polls, a streaming client reconnecting) before it is over, in ms. Default 5,000.
    pub sockjs_disconnect_delay_ms: u32,
    /// SockJS `xhr_streaming` and `eventsource`: bytes of frames after which a response is
    /// ended and the client opens the next one (browsers keep a response's text until it
    /// ends). Default 131,072.
    pub sockjs_response_limit_bytes: u32,
    /// The defences (`[edge.limits]`).
    pub limits: crate::limits::LimitsConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            id: "edge-1".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            listeners: Vec::new(),
            handshake_timeout_ms: 10_000,
            auth_timeout_ms: 10_000,
            ping_interval_secs: 25,
            pong_timeout_secs: 20,
            max_message_bytes: 65_536,
            max_frame_bytes: 0,
            max_queued_bytes: 1 << 20,
            read_buffer_bytes: 128,
            max_groups_per_connection: 256,
            refuse_before_upgrade: false,
            token_leeway_secs: 5,
            shards: 0,
            reconnect_jitter_ms: 5_000,
            close_timeout_ms: 3_000,
            registration_timeout_ms: 5_000,
            history_check_secs: 5,
            max_pending_interest: 100_000,
            registry_batch_ms: 15,
            write_window_ms: 5,
            mqtt_max_inflight: 32,
            sockjs_disconnect_delay_ms: 5_000,
            sockjs_response_limit_bytes: 128 * 1024,
            limits: Default::default(),
        }
    }
}

impl EdgeConfig {
    /// The listeners to bind: `listeners`, or a plain one on `listen` when none is given.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            vec![ListenerConfig::plain(self.listen)]
        } else {
            self.listeners.clone()
        }
    }

    /// Every problem with these settings, each naming its field.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = herald_core::ids::EdgeId::validate(&self.id) {
            p.push(format!("edge.id: {e}"));
        }
        let positive = [
            ("edge.handshake_timeout_ms", self.handshake_timeout_ms),
            ("edge.auth_timeout_ms", self.auth_timeout_ms),
            ("edge.ping_interval_secs", self.ping_interval_secs),
            ("edge.pong_timeout_secs", self.pong_timeout_secs),
            ("edge.registration_timeout_ms", self.registration_timeout_ms),
            (
                "edge.max_pending_interest",
                self.max_pending_interest as u64,
            ),
            ("edge.max_message_bytes", self.max_message_bytes as u64),
            ("edge.max_queued_bytes", self.max_queued_bytes as u64),
            ("edge.read_buffer_bytes", self.read_buffer_bytes as u64),
            (
                "edge.max_groups_per_connection",
                self.max_groups_per_connection as u64,
            ),
            ("edge.mqtt_max_inflight", u64::from(self.mqtt_max_inflight)),
            (
                "edge.sockjs_disconnect_delay_ms",
                u64::from(self.sockjs_disconnect_delay_ms),
            ),
            (
                "edge.sockjs_response_limit_bytes",
                u64::from(self.sockjs_response_limit_bytes),
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("{name}: must be greater than 0"));
            }
        }
        p.extend(self.limits.validate());
        for (i, l) in self.listeners.iter().enumerate() {
            p.extend(l.validate(&format!("edge.listeners[{i}]")));
        }
        if self.registry_batch_ms > 1_000 {
            p.push("edge.registry_batch_ms: must be at most 1000".into());
        }
        if self.write_window_ms > 100 {
            p.push("edge.write_window_ms: must be at most 100".into());
        }
        if self.max_queued_bytes < 1024 {
            p.push("edge.max_queued_bytes: must be at least 1024".into());
        }
        // The hub counts a connection's queue in 32 bits.
        if self.max_queued_bytes > 1 << 30 {
            p.push("edge.max_queued_bytes: must be at most 1073741824 (1 GiB)".into());
        }
        p
    }
}
