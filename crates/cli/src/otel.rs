//! OpenTelemetry trace export (cargo feature `otel`): the proxy's `tracing` spans — one per
//! HTTP request (`request`: method, path, session), per session, per upstream child — sent over
//! OTLP/HTTP to a collector. On when `--otel-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT` names
//! one (the base URL: spans go to `BASE/v1/traces`, as the OTLP specification says;
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names the full URL instead). `OTEL_EXPORTER_OTLP_PROTOCOL`
//! picks `http/protobuf` (default) or `http/json`; `OTEL_SERVICE_NAME` the service name
//! (default `shadowcat`); the SDK's `OTEL_BSP_*` variables tune batching.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("shadowcat: OpenTelemetry export did not shut down cleanly: {e}");
        }
    }
}

/// The traces URL: the signal-specific variable as is, else `base` + `/v1/traces`.
fn traces_url(base: &str) -> String {
    match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Ok(full) if !full.trim().is_empty() => full.trim().to_string(),
        _ => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
    }
}

fn protocol() -> Result<Protocol, String> {
    let p = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    match p.trim() {
        "" | "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported: use http/protobuf or http/json"
        )),
    }
}

/// The layer exporting spans to the collector at `endpoint`, and its guard.
pub fn layer<S>(endpoint: &str) -> Result<(Box<dyn Layer<S> + Send + Sync>, Guard), String>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let url = traces_url(endpoint);
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| format!("OpenTelemetry endpoint `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "OpenTelemetry endpoint `{url}` must be http:// or https:// (OTLP/HTTP)"
        ));
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol()?)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| format!("cannot set up the OpenTelemetry exporter for {url}: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "shadowcat".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("shadowcat");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
    Ok((layer, Guard(provider)))
}

/// The engine's [`SpanLink`](shadowcat_proxy::tracecontext::SpanLink): W3C trace context in
/// and out of `tracing` spans, through OpenTelemetry's own propagator.
pub struct Link;

impl shadowcat_proxy::tracecontext::SpanLink for Link {
    fn adopt(&self, span: &tracing::Span, parent: &shadowcat_proxy::tracecontext::TraceContext) {
        use opentelemetry::propagation::TextMapPropagator;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_string(), parent.traceparent.clone());
        if let Some(s) = &parent.tracestate {
            carrier.insert("tracestate".to_string(), s.clone());
        }
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(cx);
    }

    fn traceparent_of(&self, span: &tracing::Span) -> Option<String> {
        use opentelemetry::propagation::TextMapPropagator;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let mut carrier = std::collections::HashMap::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&span.context(), &mut carrier);
        carrier.remove("traceparent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_to_the_base() {
        // (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is not set in the test environment.)
        if std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() {
            assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
            assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        }
    }
}
