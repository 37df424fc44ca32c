//! Subcommand implementations.

pub(crate) mod config;
mod demo;
mod forward;
pub(crate) mod gateway;
pub(crate) mod hooks;
pub(crate) mod intercept;
pub(crate) mod replay;
mod servers;
mod session;
pub(crate) mod tape;

use crate::args::{Cli, Command, Forward};

/// Run a command; the result is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Forward(Forward::Stdio(a)) => forward::stdio(*a, cli.log.log_traffic).await,
        Command::Forward(Forward::Http(a)) => forward::http(*a, cli.log.log_traffic).await,
        Command::DemoServer(a) => demo::run(a).await,
        Command::Session(cmd) => session::run(cmd).await,
        Command::Tape(cmd) => tape::run(cmd),
        Command::Replay(a) => replay::run(*a, cli.log.log_traffic).await,
        Command::Intercept(cmd) => intercept::run(cmd).await,
        Command::Gateway(a) => gateway::run(*a, cli.log.log_traffic).await,
        Command::Config(cmd) => config::run(cmd),
    }
}
