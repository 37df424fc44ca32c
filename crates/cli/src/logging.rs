//! Logging setup: always to stderr (stdout belongs to MCP in stdio modes), text or JSON.

use crate::args::{LogArgs, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(args: &LogArgs) -> Result<(), String> {
    let default = if args.log_traffic {
        format!("{},shadowcat::traffic=info", args.log_level)
    } else {
        args.log_level.clone()
    };
    let filter = EnvFilter::try_from_env("SHADOWCAT_LOG")
        .or_else(|_| EnvFilter::try_new(&default))
        .map_err(|e| format!("invalid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
