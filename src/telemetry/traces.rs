//! Traces: OpenTelemetry spans for a publish, each delivery attempt, a request and its
//! responder, and an inbound adapter call, exported over OTLP/HTTP when configured.
//!
//! The spans are `tracing` spans at TRACE level with the target [`TARGET`]. With traces on,
//! the log filter lets that target through and a `tracing-opentelemetry` layer turns them
//! into OpenTelemetry spans. With traces off no layer is installed and the log filter (INFO
//! unless asked otherwise) disables them at their call site: no span is built and no
//! attribute is evaluated, so the publish path pays one cached level check per span.
//!
//! W3C Trace Context ties them together: a publish continues the caller's `traceparent`;
//! the stored message carries the publish span's (NATS header `traceparent`), so each
//! delivery attempt is a child of its publish, one trace per message; the webhook carries
//! the attempt's, so the receiver continues the same trace. Requests and inbound calls work
//! the same way. Without traces the caller's context travels unchanged.

use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracesConfig;

/// The target of every span meant for export (`tracing::trace_span!(target: TARGET, ...)`).
pub(crate) const TARGET: &str = "magistral::otel";

/// The log filter directive that lets [`TARGET`] through while exporting, whatever the log
/// level.
pub(super) const DIRECTIVE: &str = "magistral::otel=trace";

/// The provider of the installed layer, kept to flush it on shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Where spans go, from the settings and the standard `OTEL_*` variables.
#[derive(Debug, PartialEq, Eq)]
enum Export {
    Off,
    /// The full URL of the traces receiver (`<otlp_endpoint>/v1/traces`).
    To(String),
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, which the
    /// exporter reads itself.
    FromEnvironment,
}

fn export(cfg: &TracesConfig, env: impl Fn(&str) -> Option<String>) -> Export {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Export::Off;
    }
    match &cfg.otlp_endpoint {
        // As the OTLP spec has it for OTEL_EXPORTER_OTLP_ENDPOINT: a base URL, the signal's
        // path appended.
        Some(base) => Export::To(format!("{}/v1/traces", base.trim_end_matches('/'))),
        None if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT") => {
            Export::FromEnvironment
        }
        None => Export::Off,
    }
}

/// The tracer spans are exported with, or `None` when traces are off (or the exporter cannot
/// be built: said on stderr, the gateway runs on without traces). A second call (several
/// gateways in one test process) returns `None`: the first keeps the subscriber.
pub(super) fn tracer(cfg: &TracesConfig) -> Option<SdkTracer> {
    let export = export(cfg, |name| std::env::var(name).ok());
    if export == Export::Off || PROVIDER.get().is_some() {
        return None;
    }
    // reqwest is built without a default TLS provider; the one the gateway uses everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Export::To(url) = &export {
        builder = builder.with_endpoint(url.clone());
    }
    let exporter = match builder.build() {
        Ok(e) => e,
        Err(err) => {
            eprintln!("traces are off: the OTLP exporter cannot be built: {err}");
            return None;
        }
    };
    // The setting, else what the environment says (`OTEL_SERVICE_NAME`,
    // `OTEL_RESOURCE_ATTRIBUTES`), else ours rather than the SDK's `unknown_service`.
    let service = cfg.service_name.clone().unwrap_or_else(|| {
        Resource::builder()
            .build()
            .get(&opentelemetry::Key::new("service.name"))
            .map(|name| name.to_string())
            .filter(|name| !name.starts_with("unknown_service"))
            .unwrap_or_else(|| "magistral".to_owned())
    });
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        // Batched on the SDK's own thread (interval and sizes from OTEL_BSP_*).
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("magistral");
    PROVIDER.set(provider).ok()?;
    Some(tracer)
}

/// The layer turning [`TARGET`] spans into OpenTelemetry spans; attributes are the span's
/// fields only (no source locations, threads or busy/idle times).
pub(super) fn layer<S>(tracer: SdkTracer) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
}

/// Exports the spans still buffered and stops the exporter (blocking, bounded by the
/// exporter's timeout). Nothing when traces are off.
pub fn shutdown_traces() {
    if let Some(provider) = PROVIDER.get()
        && let Err(err) = provider.shutdown()
    {
        tracing::warn!(%err, "traces: not all spans were exported at shutdown");
    }
}

/// Makes `span` a child of a W3C trace context received (HTTP or NATS headers). Nothing when
/// the span is not traced or the context is absent or malformed (a fresh trace starts).
pub(crate) fn continue_from(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| !span.is_disabled()) else { return };
    let carrier = Received { traceparent, tracestate };
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C trace context to send on from `span`: its own `traceparent` (and the trace's
/// `tracestate`), or `None` when it is not traced.
pub(crate) fn propagate(span: &Span) -> Option<TraceHeaders> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = TraceHeaders::default();
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    (!headers.traceparent.is_empty()).then_some(headers)
}

/// Records that the span's operation failed: `error.type` (a delivery class or problem slug)
/// and, when the failure is the gateway's or a downstream's (not a caller's refusal), an
/// error status.
pub(crate) fn failed(span: &Span, error_type: &str, error_status: bool) {
    span.record("error.type", error_type);
    if error_status {
        span.record("otel.status_code", "error");
    }
}

/// Puts `trace` on an outgoing HTTP request in place of any context copied from the message.
pub(crate) fn set_http_headers(headers: &mut reqwest::header::HeaderMap, trace: &TraceHeaders) {
    headers.remove("tracestate");
    for (name, value) in [("traceparent", Some(&trace.traceparent)), ("tracestate", trace.tracestate.as_ref())] {
        if let Some(value) = value.and_then(|v| reqwest::header::HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
}

/// `traceparent` and `tracestate` to send.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TraceHeaders {
    pub(crate) traceparent: String,
    pub(crate) tracestate: Option<String>,
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// A received trace context.
struct Received<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Received<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn off_unless_an_endpoint_is_given() {
        let mut cfg = TracesConfig::default();
        assert_eq!(export(&cfg, env(&[])), Export::Off);
        assert_eq!(export(&cfg, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), Export::Off);
        assert_eq!(export(&cfg, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])), Export::FromEnvironment);
        assert_eq!(
            export(&cfg, env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])),
            Export::FromEnvironment
        );
        cfg.otlp_endpoint = Some("http://collector:4318/".into());
        assert_eq!(export(&cfg, env(&[])), Export::To("http://collector:4318/v1/traces".into()));
        assert_eq!(export(&cfg, env(&[("OTEL_SDK_DISABLED", "TRUE")])), Export::Off);
    }

    #[test]
    fn untraced_spans_neither_continue_nor_propagate() {
        // No subscriber here: every span is disabled, as on the hot path with traces off.
        let span = tracing::trace_span!(target: TARGET, "publish");
        continue_from(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None);
        assert_eq!(propagate(&span), None);
    }
}
