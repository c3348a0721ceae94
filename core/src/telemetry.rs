//! Every metric Herald records, in one list: its name, kind, labels and help, and for the latency
//! histograms their buckets. The exporter describes each (`# HELP`, `# TYPE`) and sets the
//! histograms' buckets from this list; the dashboard and alert rules in `deploy/` are checked
//! against it (`tests/tests/dashboards.rs`), and a scenario's scrape is checked to hold no name
//! missing from it. A new metric is added here first.
//!
//! Latencies are histograms in seconds, recorded with [`Timer`]: one clock read at the start and
//! one at the end, on paths taken once per message, call or connection (never per delivery).

use std::time::Instant;

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Only ever increases (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A latency in seconds, with the given bucket bounds (`_bucket`, `_sum`, `_count`).
    Histogram(&'static [f64]),
}

/// One metric Herald records.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The series name, `herald_...`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The label names it may carry.
    pub labels: &'static [&'static str],
    /// What it counts or measures (`# HELP`).
    pub help: &'static str,
}

/// Buckets of calls inside a data centre: Redis, NATS, the router's publish (50 µs to 2.5 s).
pub const CALL_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Buckets of what a client's round trips are part of: the handshake, TLS included (1 ms to 10 s).
pub const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of token verification, pure CPU (5 µs to 50 ms).
pub const AUTH_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.05,
];

/// The router's publish: request read to envelope handed to the bus (label `target`).
pub const ROUTER_PUBLISH_SECONDS: &str = "herald_router_publish_duration_seconds";
/// From the router's acceptance of a message to the edge having queued it to every local
/// recipient.
pub const EDGE_DELIVERY_SECONDS: &str = "herald_edge_delivery_latency_seconds";
/// The edge's admission: accept to authenticated (label `protocol`).
pub const EDGE_HANDSHAKE_SECONDS: &str = "herald_edge_handshake_duration_seconds";
/// Token (or client certificate) verification (label `result`).
pub const EDGE_AUTH_SECONDS: &str = "herald_edge_auth_duration_seconds";
/// One registry call in Redis, its round trips and retries included (label `op`).
pub const REGISTRY_CALL_SECONDS: &str = "herald_registry_call_duration_seconds";
/// One bus call over NATS (label `op`: `publish`, `control`).
pub const BUS_CALL_SECONDS: &str = "herald_bus_call_duration_seconds";

use Kind::{Counter, Gauge, Histogram};

/// Every metric, edge first, then router, registry, history, bus and process.
#[rustfmt::skip]
pub const METRICS: &[Metric] = &[
    // The edge: connections.
    m("herald_edge_connections", Gauge, &["protocol"], "Live, authenticated connections."),
    m("herald_edge_connects_total", Counter, &["protocol", "result"], "Authentication outcomes: ok, or the close code's label of the refusal."),
    m("herald_edge_handshake_failures_total", Counter, &["reason"], "Upgrades that failed before authentication (io, timeout, refused)."),
    m("herald_edge_refused_total", Counter, &["reason"], "Clients refused by a defence before the upgrade."),
    m("herald_edge_tls_handshake_failures_total", Counter, &["reason"], "TLS handshakes that did not complete on a wss listener."),
    m("herald_edge_tls_reloads_total", Counter, &["result"], "Certificate reloads (SIGHUP or a file change)."),
    m("herald_edge_proxy_protocol_refused_total", Counter, &["reason"], "Connections closed on a PROXY protocol listener before any answer."),
    m("herald_edge_subscribes_refused_total", Counter, &["reason"], "subscribe frames refused (too many groups)."),
    m("herald_edge_tracked_ips", Gauge, &[], "Client addresses with per-address state."),
    m("herald_edge_closes_total", Counter, &["protocol", "code"], "Connections closed after the upgrade, by cause."),
    m("herald_edge_accept_errors_total", Counter, &["kind"], "Failed accept calls."),
    m("herald_edge_slow_consumers_total", Counter, &[], "Connections closed because their queue overflowed (4008)."),
    m("herald_edge_jwks_fetches_total", Counter, &["result"], "JWK Set fetches (ok, error: the last good set stays)."),
    m("herald_edge_jwks_unknown_kid_total", Counter, &["outcome"], "Tokens whose kid a project's JWK Set lacked (refreshed, rate_limited)."),
    m("herald_edge_server_subscriptions_total", Counter, &["op"], "Connections the server subscribed to a group or unsubscribed."),
    m(EDGE_HANDSHAKE_SECONDS, Histogram(HANDSHAKE_BUCKETS), &["protocol"], "Seconds from a connection's accept to its client authenticated (PROXY header, TLS, upgrade, connect frame and token)."),
    m(EDGE_AUTH_SECONDS, Histogram(AUTH_BUCKETS), &["result"], "Seconds spent verifying a token or client certificate (ok or refused)."),
    // The edge: messages.
    m("herald_edge_messages_total", Counter, &[], "Envelopes delivered to the edge's hub."),
    m("herald_edge_deliveries_total", Counter, &["protocol"], "Frames queued to client connections (one per recipient)."),
    m("herald_edge_envelopes_dropped_total", Counter, &["reason"], "Envelopes of an unknown format version, or undecodable, dropped."),
    m(EDGE_DELIVERY_SECONDS, Histogram(CALL_BUCKETS), &[], "Seconds from the router's acceptance of a message to this edge having queued it to every local recipient (across machines, their clock offset included)."),
    m("herald_edge_device_acks_total", Counter, &[], "Device acknowledgements stored."),
    m("herald_edge_resumes_total", Counter, &["result"], "Resume requests by outcome (recovered, lost, unavailable)."),
    // The edge: streams of recoverable messages.
    m("herald_edge_streams", Gauge, &[], "Recoverable streams this edge follows."),
    m("herald_edge_stream_gaps_total", Counter, &[], "Gaps seen in a stream's offsets."),
    m("herald_edge_stream_repaired_total", Counter, &[], "Messages of a gap read back from history."),
    m("herald_edge_stream_gaps_unrepaired_total", Counter, &[], "Gaps history could not repair."),
    m("herald_edge_stream_duplicates_total", Counter, &[], "Messages of a stream seen twice, dropped."),
    m("herald_edge_stream_late_epoch_total", Counter, &[], "Messages of an epoch the stream already left."),
    m("herald_edge_stream_epoch_changes_total", Counter, &[], "Streams whose history epoch changed."),
    // The edge: its interest in the registry.
    m("herald_edge_resyncs_total", Counter, &["why"], "Cluster: times this edge wrote its whole interest again."),
    m("herald_edge_registry_retries_total", Counter, &[], "Cluster: registry writes retried after a failure."),
    m("herald_edge_registration_timeouts_total", Counter, &["op"], "Connects and joins answered before the registry held them (deadline passed, or registry degraded)."),
    m("herald_edge_interest_overflows_total", Counter, &[], "Interest changes beyond the pending bound (a resync follows)."),
    // The edge: MQTT and STOMP.
    m("herald_edge_mqtt_malformed_total", Counter, &["reason"], "MQTT packets that closed their connection."),
    m("herald_edge_mqtt_subscribes_refused_total", Counter, &["reason"], "MQTT topic filters refused in SUBACK."),
    m("herald_edge_mqtt_publishes_refused_total", Counter, &[], "Client PUBLISH packets refused."),
    m("herald_edge_mqtt_takeovers_total", Counter, &["resumed"], "MQTT connections closed by a newer one with the same client id."),
    m("herald_edge_mqtt_resent_total", Counter, &[], "Unacknowledged QoS 1 messages sent again after a takeover."),
    m("herald_edge_mqtt_dropped_total", Counter, &["reason"], "Messages not sent to an MQTT client."),
    m("herald_edge_mqtt_session_acks_total", Counter, &[], "MQTT session acknowledgements stored."),
    m("herald_edge_mqtt_sessions_resumed_total", Counter, &[], "MQTT sessions resumed."),
    m("herald_edge_stomp_malformed_total", Counter, &["reason"], "STOMP input that closed its connection."),
    m("herald_edge_stomp_subscribes_refused_total", Counter, &["reason"], "STOMP SUBSCRIBE frames refused."),
    // Presence events and webhooks.
    m("herald_presence_events_total", Counter, &["event"], "Presence join and leave events announced to a group's members."),
    m("herald_presence_events_dropped_total", Counter, &[], "Presence events dropped (announcer queue full or announcement failed)."),
    m("herald_webhook_events_total", Counter, &["project"], "Events queued for a project's webhook."),
    m("herald_webhook_events_dropped_total", Counter, &["project"], "Webhook events dropped beyond the queue bound."),
    m("herald_webhook_posts_total", Counter, &["result"], "Webhook posts (ok, failed)."),
    m("herald_webhook_post_seconds", Histogram(CALL_BUCKETS), &[], "Seconds of one webhook post."),
    // The router.
    m("herald_router_publishes_total", Counter, &["resolution"], "Accepted publishes by outcome (delivered, no_recipients, duplicate)."),
    m("herald_router_fallback_publishes_total", Counter, &["registry"], "Group and user targets sent to every edge while the registry was incomplete or unreachable."),
    m("herald_router_http_requests_total", Counter, &["call", "status"], "Requests answered by the HTTP/JSON API."),
    m("herald_router_console_logins_total", Counter, &["outcome"], "Console logins (ok, refused)."),
    m(ROUTER_PUBLISH_SECONDS, Histogram(CALL_BUCKETS), &["target"], "Seconds from a publish request to its envelope handed to every edge that must receive it (history and registry calls included)."),
    // The registry in Redis.
    m("herald_registry_up", Gauge, &[], "Cluster: 1 while the registry's Redis answers."),
    m("herald_registry_errors_total", Counter, &[], "Cluster: failed registry calls to Redis."),
    m("herald_registry_round_trips_total", Counter, &[], "Cluster: registry round trips to Redis."),
    m("herald_registry_edges_reaped_total", Counter, &[], "Cluster: dead edges whose entries this node cleaned up."),
    m("herald_registry_entries_written_total", Counter, &[], "Cluster: interest entries written (added or removed)."),
    m("herald_registry_whole", Gauge, &[], "Cluster: 1 while the registry holds every live edge's interest."),
    m("herald_registry_members_written_total", Counter, &[], "Cluster: presence member entries written (a user's first or last connection in a group on an edge)."),
    m(REGISTRY_CALL_SECONDS, Histogram(CALL_BUCKETS), &["op"], "Cluster: seconds of one registry call, its round trips included."),
    // The history store in Redis.
    m("herald_history_up", Gauge, &[], "Cluster: 1 while the history store's Redis answers."),
    m("herald_history_errors_total", Counter, &[], "Cluster: failed history calls to Redis."),
    m("herald_history_round_trips_total", Counter, &[], "Cluster: history round trips to Redis."),
    // The bus over NATS.
    m("herald_bus_up", Gauge, &["connection"], "Cluster: 1 while the NATS connection is up."),
    m("herald_bus_slow_consumer_total", Counter, &[], "Cluster: NATS reported this client as a slow consumer."),
    m("herald_bus_control_missing_total", Counter, &[], "Cluster: edges that did not answer an operator call in time."),
    m(BUS_CALL_SECONDS, Histogram(CALL_BUCKETS), &["op"], "Cluster: seconds of one bus call over NATS (publish, control)."),
    // The process.
    m("herald_degraded", Gauge, &[], "1 when the last /readyz found Redis or NATS unreachable."),
];

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

/// The metric of that name, if Herald records it.
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// The metric a Prometheus series name belongs to: a histogram's `_bucket`, `_sum` and `_count`
/// series belong to the histogram.
pub fn family(series: &str) -> Option<&'static Metric> {
    if let Some(m) = find(series) {
        return Some(m);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        find(base).filter(|m| matches!(m.kind, Kind::Histogram(_)))
    })
}

/// Measures one latency: started at creation, recorded in seconds by [`Timer::record`].
#[derive(Debug, Clone, Copy)]
pub struct Timer(Instant);

impl Timer {
    /// Starts measuring now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

impl Default for Timer {
    fn default() -> Self {
        Self::start()
    }
}

/// One timed backend call (a registry or bus call): records its seconds in `metric` with its
/// `op` label when dropped, however the call ends; while tracing is on and the call serves a
/// traced publish, it is also a child span of the publish.
pub struct Call {
    metric: &'static str,
    op: &'static str,
    timer: Timer,
    _span: Option<opentelemetry::global::BoxedSpan>,
}

impl Call {
    /// Starts timing `op`; `span` names its trace span (e.g. `herald.registry.resolve`).
    pub fn start(metric: &'static str, op: &'static str, span: &'static str) -> Self {
        Self {
            metric,
            op,
            timer: Timer::start(),
            _span: crate::trace::child(span, crate::trace::Kind::Client),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        metrics::histogram!(self.metric, "op" => self.op).record(self.timer.seconds());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_well_formed_and_suffixed_by_kind() {
        let mut seen = HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("herald_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty(), "{} has no help", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram(b) => {
                    assert!(m.name.ends_with("_seconds"), "{}", m.name);
                    assert!(b.windows(2).all(|w| w[0] < w[1]), "{} buckets", m.name);
                }
            }
        }
    }

    #[test]
    fn histogram_series_belong_to_their_histogram() {
        for s in ["_bucket", "_sum", "_count"] {
            let series = format!("{ROUTER_PUBLISH_SECONDS}{s}");
            assert_eq!(
                family(&series).map(|m| m.name),
                Some(ROUTER_PUBLISH_SECONDS)
            );
        }
        assert!(family("herald_edge_connections_bucket").is_none());
        assert!(family("herald_nothing").is_none());
        assert_eq!(
            family("herald_edge_connections").map(|m| m.name),
            Some("herald_edge_connections")
        );
    }
}
