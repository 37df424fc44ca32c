//! Child process lifecycle: spawn in its own process group, and the spec's shutdown sequence
//! (close stdin → wait → SIGTERM → wait → SIGKILL), applied to the whole group so that
//! grandchildren (e.g. `npx` → `node`) never outlive the session.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::ffi::{OsStr, OsString};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// The variables a child with a [`ChildEnv::Minimal`] environment gets from the proxy's own
/// (when set), besides every `LC_*`.
pub const MINIMAL_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "TERM", "TZ", "TMPDIR", "USER", "SHELL",
];

/// The environment a stdio child starts with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChildEnv {
    /// The proxy's environment without Shadowcat's own variables (every `SHADOWCAT_*`: the
    /// admin token, the store URL…): the forward modes, where the child is the local user's own
    /// tool and expects their environment.
    #[default]
    Inherit,
    /// Only [`MINIMAL_ENV`] and `LC_*` from the proxy's environment, the variables named in
    /// `passthrough`, and `set` (the gateway: its environment holds upstream credentials and
    /// tokens no stdio server should see).
    Minimal {
        /// Variables passed on from the proxy's environment when set there.
        passthrough: Vec<String>,
        /// Variables set to these values (after the others: they win).
        set: Vec<(String, String)>,
    },
}

impl ChildEnv {
    /// Whether a variable of the proxy's environment reaches the child.
    fn keeps(&self, name: &OsStr) -> bool {
        let name = name.to_string_lossy();
        match self {
            ChildEnv::Inherit => !name.starts_with("SHADOWCAT_"),
            ChildEnv::Minimal { passthrough, .. } => {
                MINIMAL_ENV.contains(&&*name)
                    || name.starts_with("LC_")
                    || passthrough.iter().any(|p| *p == name)
            }
        }
    }

    /// Give `cmd` the environment built from `parent` (the proxy's own).
    fn apply(&self, cmd: &mut Command, parent: impl IntoIterator<Item = (OsString, OsString)>) {
        cmd.env_clear();
        for (k, v) in parent.into_iter().filter(|(k, _)| self.keeps(k)) {
            cmd.env(k, v);
        }
        if let ChildEnv::Minimal { set, .. } = self {
            cmd.envs(set.iter().map(|(k, v)| (k, v)));
        }
    }
}

/// Spawn `command args` with piped stdio, in a new process group, killed if dropped, in the
/// environment `env` describes.
pub fn spawn(command: &str, args: &[String], env: &ChildEnv) -> std::io::Result<Child> {
    let mut cmd = Command::new(command);
    env.apply(&mut cmd, std::env::vars_os());
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
    let pid = pgid.unwrap_or_default();
    tracing::debug!(
        pid,
        "child did not exit after stdin closed; sending SIGTERM"
    );
    signal_group(pgid, Signal::SIGTERM);
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        signal_group(pgid, Signal::SIGKILL);
        return Some(status);
    }
    tracing::warn!(pid, "child ignored SIGTERM; sending SIGKILL");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment `env` gives a real child (`sh -c env`) of a proxy whose own is `parent`.
    async fn child_env(env: &ChildEnv, parent: &[(&str, &str)]) -> Vec<String> {
        let mut cmd = Command::new("/bin/sh");
        env.apply(
            &mut cmd,
            parent
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        let out = cmd.args(["-c", "env"]).output().await.unwrap();
        assert!(out.status.success());
        let mut vars: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .map(str::to_string)
            .collect();
        vars.sort();
        vars
    }

    const PARENT: &[(&str, &str)] = &[
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/home/u"),
        ("LC_ALL", "C.UTF-8"),
        ("SHADOWCAT_ADMIN_TOKEN", "admintok"),
        ("SHADOWCAT_STORE", "redis://:storepass@r"),
        ("UP_TOKEN", "bearersecret"),
        ("PYTHONPATH", "/opt/lib"),
    ];

    #[tokio::test]
    async fn forward_children_inherit_all_but_shadowcats_own_variables() {
        let vars = child_env(&ChildEnv::Inherit, PARENT).await;
        assert_eq!(
            vars,
            [
                "HOME=/home/u",
                "LC_ALL=C.UTF-8",
                "PATH=/usr/bin:/bin",
                "PYTHONPATH=/opt/lib",
                "UP_TOKEN=bearersecret",
            ]
        );
    }

    #[tokio::test]
    async fn gateway_children_get_the_minimal_environment_plus_what_is_configured() {
        let env = ChildEnv::Minimal {
            passthrough: vec!["PYTHONPATH".into(), "NOT_SET".into()],
            set: vec![
                ("MODE".into(), "prod".into()),
                ("HOME".into(), "/srv".into()),
            ],
        };
        let vars = child_env(&env, PARENT).await;
        assert_eq!(
            vars,
            [
                "HOME=/srv",
                "LC_ALL=C.UTF-8",
                "MODE=prod",
                "PATH=/usr/bin:/bin",
                "PYTHONPATH=/opt/lib",
            ]
        );
        let bare = ChildEnv::Minimal {
            passthrough: vec![],
            set: vec![],
        };
        assert_eq!(
            child_env(&bare, PARENT).await,
            ["HOME=/home/u", "LC_ALL=C.UTF-8", "PATH=/usr/bin:/bin"]
        );
    }
}
