//! Subcommand implementations.

pub(crate) mod config;
mod demo;
mod forward;
pub(crate) mod gateway;
pub(crate) mod hooks;
pub(crate) mod intercept;
pub(crate) mod pins;
pub(crate) mod replay;
mod servers;
mod session;
pub(crate) mod tape;

use crate::args::{Cli, Command, Forward};

/// Run a command; the result is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Forward(Forward::Stdio(a)) => {
            let t = a.hooks.log_traffic;
            forward::stdio(*a, t).await
        }
        Command::Forward(Forward::Http(a)) => {
            let t = a.hooks.log_traffic;
            forward::http(*a, t).await
        }
        Command::DemoServer(a) => demo::run(a).await,
        Command::Session(cmd) => session::run(cmd).await,
        Command::Pins(cmd) => pins::run(cmd).await,
        Command::Tape(cmd) => tape::run(cmd),
        Command::Replay(a) => {
            let t = a.hooks.log_traffic;
            replay::run(*a, t).await
        }
        Command::Intercept(cmd) => intercept::run(cmd).await,
        Command::Gateway(a) => {
            let t = a.hooks.log_traffic;
            gateway::run(*a, t).await
        }
        Command::Config(cmd) => config::run(cmd),
        Command::Completions { shell } => {
            let mut cmd = crate::args::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "shadowcat", &mut out);
            print(&out)
        }
        Command::Man => {
            let cmd = crate::args::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            print(&out)
        }
    }
}

/// Write generated text to stdout; a reader that stops early (`| head`) is not an error.
pub(crate) fn print(bytes: &[u8]) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}
