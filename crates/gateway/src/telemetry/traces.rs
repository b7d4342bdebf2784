//! OpenTelemetry traces over OTLP: off by default, on when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; every
//! other `OTEL_*` variable of the OTLP exporter applies as usual.
//!
//! Only the gateway's own operation spans are exported (an inbound CALL, a Kafka record
//! produced or consumed, a command's CALL to a charge point); the long-lived session span
//! that carries the charge point id in logs is not, so each CALL is a trace of its own.
//! W3C `traceparent` travels in Kafka record headers both ways.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
    Context,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter::filter_fn, registry::LookupSpan, Layer};

/// Names of the spans exported to OpenTelemetry.
pub const EXPORTED_SPANS: [&str; 4] = [
    "ocpp.call",
    "ocpp.command",
    "kafka.produce",
    "kafka.consume",
];

/// Whether the standard environment asks for OTLP traces.
pub fn enabled_by_environment() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// A tracer provider exporting in batches over OTLP/HTTP. Without `endpoint` and
/// `protocol`, the `OTEL_*` environment decides (endpoint, protocol, headers, timeout).
pub fn provider(
    endpoint: Option<&str>,
    protocol: Option<Protocol>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(protocol) = protocol {
        builder = builder.with_protocol(protocol);
    }
    let exporter = builder.build()?;
    let service =
        std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "charge-point-gateway".to_owned());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Whether a tracing layer exporting spans was made (see [`exporting`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans may be exported: an OpenTelemetry layer was made. Spans that exist
/// for traces alone are skipped otherwise; creating one per message was a fifth of the
/// gateway's CPU per CALL.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The tracing layer that turns the gateway's operation spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    EXPORTING.store(true, Ordering::Relaxed);
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("charge-point-gateway"))
        .with_filter(filter_fn(|metadata| {
            metadata.is_span() && EXPORTED_SPANS.contains(&metadata.name())
        }))
}

/// The trace id of `span` (hex), when it is exported.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Records the span's own trace and span ids as its `trace_id` / `span_id` fields, so
/// that every log line inside it carries them (no-op while tracing is off). Returns
/// whether the span is exported.
pub fn record_ids(span: &Span) -> bool {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
        span.record("span_id", span_context.span_id().to_string());
    }
    span_context.is_valid()
}

/// The W3C trace context of `span` as record headers (empty while tracing is off).
pub fn inject(span: &Span) -> Vec<(String, String)> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier = HeaderCarrier::default();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.0.into_iter().collect()
}

/// Makes the trace context in record headers the parent of `span`.
pub fn adopt_parent<'a>(span: &Span, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let carrier = HeaderCarrier(
        headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect(),
    );
    let parent: Context =
        global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[derive(Default)]
struct HeaderCarrier(HashMap<String, String>);

impl Injector for HeaderCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for HeaderCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
