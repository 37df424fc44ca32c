//! Child process lifecycle: spawn in its own process group, and the spec's shutdown sequence
//! (close stdin → wait → SIGTERM → wait → SIGKILL), applied to the whole group so that
//! grandchildren (e.g. `npx` → `node`) never outlive the session.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Spawn `command args` with piped stdio, in a new process group, killed if dropped.
pub fn spawn(command: &str, args: &[String]) -> std::io::Result<Child> {
    let mut cmd = Command::new(command);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    cmd.spawn()
}

/// Send `signal` to the child's process group; a group that is already gone is fine.
pub fn signal_group(pgid: Option<u32>, signal: Signal) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Wait for a child whose stdin was just closed; escalate to SIGTERM, then SIGKILL, each after
/// `grace`. Returns the exit status (None only if waiting itself failed).
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pgid = child.id();
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        signal_group(pgid, Signal::SIGKILL);
        return Some(status);
    }
    tracing::debug!(pid = ?pgid, "child did not exit after stdin closed; sending SIGTERM");
    signal_group(pgid, Signal::SIGTERM);
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        signal_group(pgid, Signal::SIGKILL);
        return Some(status);
    }
    tracing::warn!(pid = ?pgid, "child ignored SIGTERM; sending SIGKILL");
    signal_group(pgid, Signal::SIGKILL);
    child.wait().await.ok()
}

/// The shell-style exit code: the code, or 128 + signal number when killed by a signal.
pub fn exit_code(status: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
