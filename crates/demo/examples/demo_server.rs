//! Run the demo MCP server by hand.
//!
//! ```text
//! cargo run -p shadowcat-demo --example demo_server                        # stdio
//! cargo run -p shadowcat-demo --example demo_server -- --http 127.0.0.1:8080  # http://127.0.0.1:8080/mcp
//! ```
//!
//! Logs go to stderr (filter with `RUST_LOG`, default `info`); stdout carries
//! only MCP in stdio mode. Ctrl-C stops the server.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: demo_server [--http ADDR]   (ADDR e.g. 127.0.0.1:8080; default: stdio)";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let http_addr = match args.as_slice() {
        [] => None,
        [flag, addr] if flag == "--http" => Some(addr.clone()),
        [flag] if flag == "-h" || flag == "--help" => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });

    let result = match http_addr {
        None => shadowcat_demo::serve_stdio(cancel).await,
        Some(addr) => match tokio::net::TcpListener::bind(&addr).await {
            Ok(listener) => {
                match listener.local_addr() {
                    Ok(local) => eprintln!(
                        "demo MCP server at http://{local}{}",
                        shadowcat_demo::HTTP_PATH
                    ),
                    Err(error) => eprintln!("demo MCP server listening ({error})"),
                }
                shadowcat_demo::serve_http(listener, cancel).await
            }
            Err(error) => {
                eprintln!("error: cannot listen on {addr}: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
