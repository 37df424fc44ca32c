//! OpenTelemetry trace export (cargo feature `otel`): the proxy's `tracing` spans — one per
//! HTTP request (`request`: method, path, session), per session, per upstream child — sent over
//! OTLP to a collector. On when `--otel-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT` names one.
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`) picks
//! `http/protobuf` (default), `http/json` or `grpc`. Over HTTP the endpoint is the base URL and
//! spans go to `BASE/v1/traces`, as the OTLP specification says; over gRPC it is the collector's
//! address as is (`http://collector:4317`; `https://` with the system's roots).
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names the full URL instead. `OTEL_SERVICE_NAME` sets the
//! service name (default `shadowcat`); the SDK's `OTEL_BSP_*` variables tune batching.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
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

/// The traces URL: the signal-specific variable as is, else `base` + `/v1/traces` (OTLP/HTTP)
/// or `base` itself (gRPC).
fn traces_url(base: &str, protocol: Protocol) -> String {
    match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Ok(full) if !full.trim().is_empty() => full.trim().to_string(),
        _ if protocol == Protocol::Grpc => base.trim().trim_end_matches('/').to_string(),
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
        "grpc" => Ok(Protocol::Grpc),
        other => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported: use http/protobuf, http/json or grpc"
        )),
    }
}

/// The gRPC exporter on a Tokio runtime of its own: tonic needs a reactor, and the SDK's batch
/// processor exports from a plain thread (one worker; shut down in the background when the
/// exporter goes, so that dropping it inside `main`'s runtime cannot panic).
#[derive(Debug)]
struct OnRuntime {
    inner: SpanExporter,
    rt: Option<tokio::runtime::Runtime>,
}

impl OnRuntime {
    fn new(url: &str) -> Result<OnRuntime, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shadowcat-otlp-grpc")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OpenTelemetry gRPC exporter's runtime: {e}"))?;
        let inner = {
            let _in = rt.enter();
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .build()
                .map_err(|e| format!("cannot set up the OpenTelemetry exporter for {url}: {e}"))?
        };
        Ok(OnRuntime {
            inner,
            rt: Some(rt),
        })
    }
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        // Called from the batch processor's own thread, never from inside a runtime.
        let done = match &self.rt {
            Some(rt) => rt.block_on(self.inner.export(batch)),
            None => Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown),
        };
        std::future::ready(done)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        let _in = self.rt.as_ref().map(|rt| rt.enter());
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        let _in = self.rt.as_ref().map(|rt| rt.enter());
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl Drop for OnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The layer exporting spans to the collector at `endpoint`, and its guard.
pub fn layer<S>(endpoint: &str) -> Result<(Box<dyn Layer<S> + Send + Sync>, Guard), String>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let protocol = protocol()?;
    let url = traces_url(endpoint, protocol);
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| format!("OpenTelemetry endpoint `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "OpenTelemetry endpoint `{url}` must be http:// or https://"
        ));
    }
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "shadowcat".into());
    let builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let provider = if protocol == Protocol::Grpc {
        builder.with_batch_exporter(OnRuntime::new(&url)?).build()
    } else {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(url.clone())
            .build()
            .map_err(|e| format!("cannot set up the OpenTelemetry exporter for {url}: {e}"))?;
        builder.with_batch_exporter(exporter).build()
    };
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
            let http = Protocol::HttpBinary;
            assert_eq!(
                traces_url("http://c:4318/", http),
                "http://c:4318/v1/traces"
            );
            assert_eq!(traces_url("http://c:4318", http), "http://c:4318/v1/traces");
            assert_eq!(
                traces_url("http://c:4317/", Protocol::Grpc),
                "http://c:4317"
            );
        }
    }
}
