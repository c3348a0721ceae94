//! The admin HTTP endpoint: `/healthz` (alive), `/readyz` (serving, 503 while draining) and
//! `/metrics` (Prometheus text format).
//!
//! Degraded is not unready: while Redis (the registry's or history's) or NATS is unreachable the
//! node still serves its clients,
//! so `/readyz` stays 200 and says `degraded` with the reasons in its body (a probe that drained
//! every edge on a Redis blip would turn a blip into an outage).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use herald_core::bus::Bus;
use herald_core::history::History;
use herald_core::registry::Registry;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoint reports.
#[derive(Clone)]
pub struct AdminState {
    /// False once shutdown began.
    pub ready: Arc<AtomicBool>,
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
    /// The registry, asked whether it is degraded.
    pub registry: Arc<dyn Registry>,
    /// The bus, asked whether it is degraded.
    pub bus: Arc<dyn Bus>,
    /// The history store, asked whether it is degraded.
    pub history: Arc<dyn History>,
}

/// Serves the admin endpoint until `cancel` fires.
pub async fn serve(listener: TcpListener, state: AdminState, cancel: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let server = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "admin endpoint failed");
    }
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let reasons = degraded(&s);
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::OK,
            format!("ready, degraded: {}\n", reasons.join("; ")),
        )
    }
}

/// Why the node is degraded (none: it is not), also set in `herald_degraded`.
fn degraded(s: &AdminState) -> Vec<String> {
    let reasons: Vec<String> = [
        s.registry.degraded(),
        s.bus.degraded(),
        s.history.degraded(),
    ]
    .into_iter()
    .flatten()
    .collect();
    metrics::gauge!("herald_degraded").set(if reasons.is_empty() { 0.0 } else { 1.0 });
    reasons
}

/// The metrics, `herald_degraded` as of this scrape (every node has it, so dashboards list
/// nodes by it).
async fn metrics(State(s): State<AdminState>) -> String {
    degraded(&s);
    s.metrics.render()
}
