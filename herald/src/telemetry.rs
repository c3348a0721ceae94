//! The process's telemetry: the Prometheus recorder behind `/metrics` (every metric of
//! [`herald_core::telemetry::METRICS`] described, the latency histograms with their buckets), and
//! OpenTelemetry traces exported over OTLP/gRPC when `[telemetry] otlp_endpoint` is set.

use std::time::Duration;

use anyhow::Context as _;
use herald_core::telemetry::{Kind, METRICS};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::config::TelemetryConfig;

/// Installs the Prometheus recorder: histograms get their buckets, every metric its help.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for m in METRICS {
        if let Kind::Histogram(buckets) = m.kind {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(m.name.to_string()), buckets)
                .with_context(|| format!("buckets of {}", m.name))?;
        }
    }
    let handle = builder
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram(_) => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
        }
    }
    Ok(handle)
}

/// The trace exporter, while there is one; flushed and stopped by [`Tracing::shutdown`].
pub struct Tracing(Option<SdkTracerProvider>);

/// Starts exporting traces when `cfg.otlp_endpoint` is set (spans then carry `service.name`
/// and `service.instance.id` = `node`); otherwise leaves tracing off. Must run inside the
/// runtime (the exporter's connection lives on it).
pub fn install_tracing(cfg: &TelemetryConfig, node: &str) -> anyhow::Result<Tracing> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(Tracing(None));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("telemetry.otlp_endpoint {endpoint}"))?;
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node.to_string(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    herald_core::trace::enable();
    tracing::info!(endpoint = %endpoint, "exporting traces over otlp");
    Ok(Tracing(Some(provider)))
}

impl Tracing {
    /// Sends the spans still buffered and stops the exporter (bounded by the export timeout).
    pub async fn shutdown(self) {
        let Some(provider) = self.0 else {
            return;
        };
        // The batch processor's own thread flushes; this one must not block the runtime.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}
