//! Logging setup: always to stderr (stdout belongs to MCP in stdio modes), text or JSON; with
//! the `otel` feature, spans also go to an OpenTelemetry collector (the `otel` module), filtered
//! on their own (`SHADOWCAT_OTEL_FILTER`, default `info`) so `--log-level warn` keeps traces.

use crate::args::{LogArgs, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Kept by `main` until the end: flushes what must be flushed (exported spans).
pub struct Guard {
    #[cfg(feature = "otel")]
    _otel: Option<crate::otel::Guard>,
}

/// The log filter: SHADOWCAT_LOG, else RUST_LOG, else `default` (from --log-level). A variable
/// that is set but invalid is an error, not silently ignored.
fn filter(default: &str) -> Result<EnvFilter, String> {
    for var in ["SHADOWCAT_LOG", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return EnvFilter::try_new(&v).map_err(|e| format!("invalid {var} `{v}`: {e}"));
        }
    }
    EnvFilter::try_new(default).map_err(|e| format!("invalid log filter: {e}"))
}

pub fn init(args: &LogArgs, log_traffic: bool) -> Result<Guard, String> {
    // The demo server's MCP library (rmcp) logs every handshake at INFO with `Debug` dumps of
    // the peer: quiet unless asked for (`--log-level rmcp=info`).
    let quiet = "rmcp=warn";
    let default = if log_traffic {
        format!("{quiet},{},shadowcat::traffic=info", args.log_level)
    } else {
        format!("{quiet},{}", args.log_level)
    };
    let filter = filter(&default)?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.with_ansi(false).with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![fmt];
    #[cfg(feature = "otel")]
    let otel = match args
        .otel_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        Some(endpoint) => {
            let filter = EnvFilter::try_from_env("SHADOWCAT_OTEL_FILTER")
                .or_else(|_| EnvFilter::try_new("info"))
                .map_err(|e| format!("invalid SHADOWCAT_OTEL_FILTER: {e}"))?;
            let (layer, guard) = crate::otel::layer::<Registry>(endpoint)?;
            layers.push(layer.with_filter(filter).boxed());
            // Trace context from clients continues in our spans and goes on to upstreams.
            shadowcat_proxy::tracecontext::install(std::sync::Arc::new(crate::otel::Link));
            Some(guard)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| e.to_string())?;
    #[cfg(not(feature = "otel"))]
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        tracing::warn!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no OpenTelemetry export (build with `--features otel`)"
        );
    }
    Ok(Guard {
        #[cfg(feature = "otel")]
        _otel: otel,
    })
}
