//! Traces (OpenTelemetry) of a publish through the router, the bus and the edges: the router's
//! publish span, its registry and bus calls as children, and each edge's delivery span joined to
//! the same trace through the context the envelope carries (`trace_context`, W3C
//! `traceparent`).
//!
//! Off unless the binary installed an exporter (`[telemetry] otlp_endpoint`) and called
//! [`enable`]: while off, nothing is created, injected or extracted, and every call here returns
//! after one relaxed atomic load.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::global::{self, BoxedSpan, BoxedTracer};
use opentelemetry::trace::{SpanKind, Tracer as _};
use opentelemetry::{Context, KeyValue};

pub use opentelemetry::context::FutureExt;
pub use opentelemetry::propagation::Extractor;
pub use opentelemetry::trace::{Span, SpanKind as Kind, Status, TraceContextExt};
pub use opentelemetry::{Context as TraceContext, KeyValue as Attribute};

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded (an exporter is installed).
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Turns tracing on, once the global tracer provider and text map propagator are installed.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Herald's tracer, from the global provider (the first call after [`enable`] fixes it).
fn tracer() -> &'static BoxedTracer {
    static TRACER: OnceLock<BoxedTracer> = OnceLock::new();
    TRACER.get_or_init(|| global::tracer("herald"))
}

/// Starts a span `name` as a child of `parent` (a root span when `parent` has none); returns the
/// context holding it, which ends the span when its last clone is dropped or
/// [`end`] is called.
pub fn start(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
) -> Context {
    let span = tracer()
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer(), parent);
    parent.with_span(span)
}

/// Ends the span of `cx`, with an error status when `error` is given.
pub fn end(cx: &Context, error: Option<&dyn std::fmt::Display>) {
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// A child span of the current context's span, when tracing is on and a span is current (a
/// call made while serving a traced publish); `None` otherwise, so calls made outside a traced
/// publish (heartbeats, the edges' own writes) start no trace of their own. Ends when dropped.
pub fn child(name: &'static str, kind: SpanKind) -> Option<BoxedSpan> {
    if !enabled() {
        return None;
    }
    let cx = Context::current();
    if !cx.has_active_span() {
        return None;
    }
    Some(
        tracer()
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer(), &cx),
    )
}

/// Writes the trace context of `cx` into `carrier` with the installed propagator (W3C).
pub fn inject(cx: &Context, carrier: &mut HashMap<String, String>) {
    global::get_text_map_propagator(|p| p.inject_context(cx, carrier));
}

/// Reads a trace context from `carrier` with the installed propagator; an empty or malformed
/// carrier gives a context without a remote parent.
pub fn extract(carrier: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(carrier))
}

/// Reads a trace context from any carrier (e.g. gRPC metadata or HTTP headers) with the
/// installed propagator.
pub fn extract_from(carrier: &dyn opentelemetry::propagation::Extractor) -> Context {
    global::get_text_map_propagator(|p| p.extract(carrier))
}
