//! `shadowcat`: a proxy for the Model Context Protocol.

mod args;
mod commands;
mod logging;
#[cfg(feature = "otel")]
mod otel;

/// The runtime a command runs on. One thread for everything but the HTTP demo server: the
/// HTTP fronts serve connections on worker threads of their own (`--workers`), and what stays
/// here (accepting, signals, housekeeping, a stdio session) is light; a stdio demo server serves
/// one client. The HTTP demo server stands in for a real multi-threaded upstream.
fn runtime_for(command: &args::Command) -> tokio::runtime::Builder {
    match command {
        args::Command::DemoServer(a) if a.http.is_some() => {
            tokio::runtime::Builder::new_multi_thread()
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = args::parse();
    let _logging = match logging::init(&cli.log, cli.log_traffic()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("shadowcat: cannot set up logging: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match runtime_for(&cli.command).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadowcat: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = runtime.block_on(commands::run(cli));
    // Do not wait for stray blocking reads of stdin (tokio's stdin uses a blocking thread).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match code {
        Ok(c) => std::process::ExitCode::from(u8::try_from(c).unwrap_or(1)),
        Err(e) => {
            // One line, once (not also as an ERROR log line).
            eprintln!("shadowcat: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
