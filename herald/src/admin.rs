//! The admin HTTP endpoint: `/healthz` (alive), `/readyz` (serving, 503 while draining) and
//! `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
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

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

async fn metrics(State(s): State<AdminState>) -> String {
    s.metrics.render()
}
