//! Subcommand implementations.

mod demo;
mod forward;
mod session;

use crate::args::{Cli, Command, Forward};

/// Run a command; the result is the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Forward(Forward::Stdio(a)) => forward::stdio(a, cli.log.log_traffic).await,
        Command::Forward(Forward::Http(a)) => forward::http(*a, cli.log.log_traffic).await,
        Command::DemoServer(a) => demo::run(a).await,
        Command::Session(cmd) => session::run(cmd).await,
    }
}
