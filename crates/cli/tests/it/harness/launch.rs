//! The one process launcher of the end-to-end tests: the `shadowcat` binary, Python and Node
//! peers. A [`Launch`] is a builder (program, args, env, stdin/stdout, readiness); it starts a
//! [`Process`] (killed on drop, its stderr always captured and retrievable, SIGTERM and exit
//! code), a [`Server`] (a process that printed `shadowcat: listening on ADDR`), or runs to
//! completion ([`Launch::output`], [`Launch::run`]).

use super::super::python::{python, workspace};
use super::WAIT;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;

const LISTENING: &str = "shadowcat: listening on ";
const ADMIN_LISTENING: &str = "shadowcat: admin listening on ";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shadowcat")
}

/// What the process's standard input is.
enum Input {
    Null,
    Piped,
    Bytes(Vec<u8>),
}

/// When a started process counts as ready.
#[derive(Clone, Copy)]
enum Ready {
    /// As soon as it is spawned.
    Spawned,
    /// Once it printed `shadowcat: listening on` (and with `admin`, the admin line too).
    Listening { admin: bool },
    /// Once something accepts connections on this loopback port.
    Port(u16),
}

/// A command line to start, builder style.
pub struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Input,
    stdout: bool,
    ready: Ready,
    within: Duration,
    label: String,
}

impl Launch {
    pub fn new(program: impl AsRef<OsStr>) -> Launch {
        let program = program.as_ref().to_owned();
        let label = std::path::Path::new(&program)
            .file_name()
            .unwrap_or(&program)
            .to_string_lossy()
            .into_owned();
        Launch {
            program,
            args: Vec::new(),
            env: Vec::new(),
            stdin: Input::Null,
            stdout: false,
            ready: Ready::Spawned,
            within: WAIT,
            label,
        }
    }

    /// `shadowcat ARGS`.
    pub fn shadowcat(args: &[&str]) -> Launch {
        Launch::new(bin()).args(args)
    }

    /// The Python interpreter of the tests (scripts/python-env.sh's, with `mcp`): every test
    /// that runs Python starts it through here.
    pub fn python() -> Launch {
        Launch::new(python()).label("python")
    }

    /// The Python interpreter on tests/interop/SCRIPT.
    pub fn interop(script: &str) -> Launch {
        Launch::python()
            .arg(workspace().join("tests/interop").join(script))
            .label(script)
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Launch {
        self.env.push((key.into(), value.as_ref().to_owned()));
        self
    }

    pub fn envs(mut self, env: &[(&str, &str)]) -> Launch {
        self.env.extend(
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        self
    }

    /// Keep a pipe to the process's stdin ([`Process::send`], [`Process::close_stdin`]).
    pub fn stdin_piped(mut self) -> Launch {
        self.stdin = Input::Piped;
        self
    }

    /// Write these bytes to stdin, then close it.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Launch {
        self.stdin = Input::Bytes(bytes.into());
        self
    }

    /// Read the process's stdout line by line ([`Process::next_line`]); otherwise it is
    /// discarded (one-shot runs always capture it).
    pub fn stdout_piped(mut self) -> Launch {
        self.stdout = true;
        self
    }

    /// Ready once it prints `shadowcat: listening on ADDR` (see [`Launch::serve`]).
    pub fn listening(mut self) -> Launch {
        self.ready = Ready::Listening { admin: false };
        self
    }

    /// Ready once it prints both `listening on` and `admin listening on` (in any order).
    pub fn with_admin(mut self) -> Launch {
        self.ready = Ready::Listening { admin: true };
        self
    }

    /// Ready once something accepts connections on `port` of 127.0.0.1.
    pub fn port(mut self, port: u16) -> Launch {
        self.ready = Ready::Port(port);
        self
    }

    /// How long it may take to become ready (default [`WAIT`]).
    pub fn within(mut self, limit: Duration) -> Launch {
        self.within = limit;
        self
    }

    /// Its name in messages and in the `SHADOWCAT_TEST_LOGS` echo of its stderr.
    pub fn label(mut self, label: &str) -> Launch {
        self.label = label.to_string();
        self
    }

    fn std_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The command itself, for a client that spawns and talks to it on its own (rmcp's
    /// child-process transport).
    pub fn command(self) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command())
    }

    fn stdin_stdio(&self) -> Stdio {
        match self.stdin {
            Input::Null => Stdio::null(),
            Input::Piped | Input::Bytes(_) => Stdio::piped(),
        }
    }

    /// Start it and wait until it is ready.
    pub async fn start(self) -> Process {
        let mut cmd = tokio::process::Command::from(self.std_command());
        cmd.stdin(self.stdin_stdio())
            .stdout(if self.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.label));
        let mut stdin = child.stdin.take();
        if let (Input::Bytes(bytes), Some(pipe)) = (&self.stdin, &mut stdin) {
            pipe.write_all(bytes).await.expect("write stdin");
            stdin = None;
        }
        let stdout = child.stdout.take().map(|out| BufReader::new(out).lines());
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines_seen) = watch::channel(0usize);
        let keep = log.clone();
        let label = self.label.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("SHADOWCAT_TEST_LOGS").is_some() {
                    eprintln!("[{label}] {line}");
                }
                let n = {
                    let mut log = keep.lock().unwrap();
                    log.push(line);
                    log.len()
                };
                tx.send_replace(n);
            }
            // Dropping `tx` tells the waiters that stderr is closed.
        });
        let mut p = Process {
            child,
            stdin,
            stdout,
            log,
            lines_seen,
            label: self.label,
        };
        match self.ready {
            Ready::Spawned => {}
            Ready::Listening { admin } => {
                let mut needles = vec![LISTENING];
                if admin {
                    needles.push(ADMIN_LISTENING);
                }
                for needle in needles {
                    p.wait_for(self.within, "listening", |l| l.starts_with(needle))
                        .await;
                }
            }
            Ready::Port(port) => p.wait_port(port, self.within).await,
        }
        p
    }

    /// Start it (ready once listening) as a server.
    pub async fn serve(mut self) -> Server {
        if matches!(self.ready, Ready::Spawned) {
            self.ready = Ready::Listening { admin: false };
        }
        let process = self.start().await;
        let addr = |prefix: &str| {
            process
                .log()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|a| a.trim().to_string()))
        };
        let base = addr(LISTENING).expect("a listening line");
        let admin = addr(ADMIN_LISTENING);
        Server {
            process,
            base,
            admin,
        }
    }

    /// Run it to completion (within [`WAIT`]): status, stdout and stderr.
    pub async fn output(self) -> Output {
        let mut cmd = tokio::process::Command::from(self.std_command());
        cmd.stdin(self.stdin_stdio())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.label));
        if let (Input::Bytes(bytes), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            pipe.write_all(bytes).await.expect("write stdin");
        }
        tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} did not finish in time", self.label))
            .unwrap_or_else(|e| panic!("run {}: {e}", self.label))
    }

    /// [`Launch::output`] for synchronous code (blocking; no time limit).
    pub fn run(self) -> Output {
        let mut cmd = self.std_command();
        cmd.stdin(self.stdin_stdio())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.label));
        if let (Input::Bytes(bytes), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(bytes).expect("write stdin");
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.label))
    }
}

/// `shadowcat ARGS` to completion (blocking), with `NO_COLOR=1`.
pub fn run(args: &[&str]) -> Output {
    Launch::shadowcat(args).env("NO_COLOR", "1").run()
}

/// Standard output or error of a finished command, as text.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A started process: killed on drop; its stderr is kept (and drained so it never blocks).
pub struct Process {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<Lines<BufReader<ChildStdout>>>,
    log: Arc<Mutex<Vec<String>>>,
    /// How many stderr lines were read; closed once stderr is.
    lines_seen: watch::Receiver<usize>,
    label: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// The stderr lines read so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Wait (within `limit`) for a stderr line that `want` accepts; that line. Panics with the
    /// log if stderr closes first.
    async fn wait_for(&self, limit: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut lines_seen = self.lines_seen.clone();
        let found = tokio::time::timeout(limit, async {
            loop {
                let seen = self.log.lock().unwrap().iter().find(|l| want(l)).cloned();
                if let Some(l) = seen {
                    return Some(l);
                }
                if lines_seen.changed().await.is_err() {
                    // Closed: one last look at what came before.
                    return self.log.lock().unwrap().iter().find(|l| want(l)).cloned();
                }
            }
        })
        .await;
        let log = self.log().join("\n");
        match found {
            Ok(Some(l)) => l,
            Ok(None) => panic!("{} ended before {what}; its stderr:\n{log}", self.label),
            Err(_) => panic!("{} not {what} in time; its stderr:\n{log}", self.label),
        }
    }

    /// Wait until a stderr line contains every needle; that line.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        let what = format!("logging {needles:?}");
        self.wait_for(WAIT, &what, |l| needles.iter().all(|n| l.contains(n)))
            .await
    }

    /// Every stderr line, once the process closed its stderr (it exited); within [`WAIT`].
    pub async fn full_log(&self) -> Vec<String> {
        let mut lines_seen = self.lines_seen.clone();
        tokio::time::timeout(WAIT, async { while lines_seen.changed().await.is_ok() {} })
            .await
            .unwrap_or_else(|_| panic!("{} kept its stderr open", self.label));
        self.log()
    }

    /// Wait until something listens on `port`; the process must not exit first.
    async fn wait_port(&mut self, port: u16, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited before listening ({status}); its stderr:\n{}",
                    self.label,
                    self.log().join("\n")
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not listen on port {port}",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Write one line (a JSON value) to stdin.
    pub async fn send(&mut self, v: &Value) {
        self.send_raw(&format!("{v}\n")).await;
    }

    /// Write these bytes to stdin as they are.
    pub async fn send_raw(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin piped and open");
        stdin.write_all(text.as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Close stdin (EOF for the process).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line (within [`WAIT`]); `None` at EOF.
    pub async fn next_line(&mut self) -> Option<String> {
        let out = self.stdout.as_mut().expect("stdout piped");
        tokio::time::timeout(WAIT, out.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line from {} in time", self.label))
            .expect("read stdout")
    }

    /// The next stdout line, which must be JSON.
    pub async fn next_json(&mut self) -> Value {
        let l = self.next_line().await.expect("a line on stdout");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {l}"))
    }

    /// Wait (within [`WAIT`]) for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit in time", self.label))
            .expect("wait")
    }

    /// SIGTERM, then wait for the exit; the exit code (`None`: killed by a signal).
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        self.wait().await.code()
    }

    /// SIGKILL, then wait for the exit.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("send SIGKILL");
        self.wait().await;
    }
}

/// A running process that serves HTTP (it printed `shadowcat: listening on BASE`).
pub struct Server {
    pub process: Process,
    /// `http://ADDR` of its listener.
    pub base: String,
    /// `http://ADDR` of its admin listener (started [`Launch::with_admin`]).
    pub admin: Option<String>,
}

impl std::ops::Deref for Server {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Server {
    /// Start `shadowcat ARGS` and wait for its "listening on" line.
    pub async fn start(args: &[&str]) -> Server {
        Launch::shadowcat(args).label("proxy").serve().await
    }

    /// [`Server::start`] with extra environment variables for the process.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Launch::shadowcat(args)
            .envs(env)
            .label("proxy")
            .serve()
            .await
    }

    /// `shadowcat forward http --listen 127.0.0.1:0 EXTRA…`
    pub async fn forward_http(extra: &[&str]) -> Server {
        let mut args = vec!["forward", "http", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Server::start(&args).await
    }

    /// `shadowcat demo-server --http 127.0.0.1:0`
    pub async fn demo_http() -> Server {
        Server::start(&["demo-server", "--http", "127.0.0.1:0"]).await
    }

    pub fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        self.process.terminate().await
    }
}
