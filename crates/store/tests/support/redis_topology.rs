//! A private Redis Cluster (three primaries) or Sentinel set (a primary, a replica and two
//! Sentinels) for one test: real `redis-server` processes on free loopback ports, files in a temp
//! dir, no persistence, every process killed when the guard drops (also on panic).
//! `SHADOWCAT_REDIS_SERVER` overrides the binary. Only std and `tempfile`: the store's tests and
//! the binary's end-to-end tests both include this file.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a deployment may take to come up or to fail over (a loaded 2-core box is slow).
const SETTLE: Duration = Duration::from_secs(30);

/// The name Sentinel knows the primary by.
pub const SERVICE: &str = "shadowcat";

fn binary() -> String {
    std::env::var("SHADOWCAT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A RESP reply, as far as these helpers need one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (a status, an error, a number or a bulk string).
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(items)) => {
                items.iter().map(Reply::text).collect::<Vec<_>>().join(" ")
            }
        }
    }

    pub fn items(&self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(items)) => items.clone(),
            _ => Vec::new(),
        }
    }
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || std::io::Error::other(format!("bad RESP line `{line}`"));
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_reply(r)?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}

/// Sends one command to the server on `port` and reads its reply.
pub fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    s.write_all(&out)?;
    read_reply(&mut BufReader::new(s))
}

/// `command`, panicking on an I/O error.
pub fn must(port: u16, args: &[&str]) -> Reply {
    command(port, args).unwrap_or_else(|e| panic!("{args:?} on port {port}: {e}"))
}

/// Waits until `ready` holds, panicking with `what` after [`SETTLE`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `redis-server` process on a loopback port, killed on drop.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    /// Starts `redis-server` with `args` (a config file first, if any) on a free port and waits
    /// until it answers `PING`; `None` if it exited (the port was taken meanwhile).
    fn start(dir: &Path, port: u16, args: &[String]) -> Option<Node> {
        std::fs::create_dir_all(dir).expect("node dir");
        let log = std::fs::File::create(dir.join("redis.log")).expect("redis log");
        let log_err = log.try_clone().expect("redis log");
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); install Debian's `redis-server` package",
                binary()
            )
        });
        let mut node = Node {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            if command(port, &["PING"]).is_ok_and(|r| r == Reply::Status("PONG".into())) {
                return Some(node);
            }
            if let Some(c) = node.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                node.child = None;
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a node on a fresh port, trying again if another process took the port first.
fn start_node(dir: &Path, args: impl Fn(u16) -> Vec<String>) -> Node {
    std::fs::create_dir_all(dir).expect("node dir");
    for _ in 0..5 {
        let port = free_port();
        if let Some(n) = Node::start(dir, port, &args(port)) {
            return n;
        }
    }
    panic!("no redis-server could start in {}", dir.display());
}

/// A Redis Cluster of three primaries (no replicas), slots split evenly.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir for the cluster");
        // (node, its cluster bus port: given, since port + 10000 may be taken or too high)
        let nodes: Vec<(Node, u16)> = (0..3)
            .map(|i| {
                let bus = free_port();
                let node = start_node(&dir.path().join(format!("node{i}")), |_| {
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        "nodes.conf".into(),
                        "--cluster-port".into(),
                        bus.to_string(),
                    ]
                });
                (node, bus)
            })
            .collect();
        for (n, bus) in &nodes[1..] {
            let r = must(
                nodes[0].0.port,
                &[
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &n.port.to_string(),
                    &bus.to_string(),
                ],
            );
            assert_eq!(r, Reply::Status("OK".into()), "MEET");
        }
        let nodes: Vec<Node> = nodes.into_iter().map(|(n, _)| n).collect();
        let per = 16384 / nodes.len();
        for (i, n) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == nodes.len() {
                16383
            } else {
                first + per - 1
            };
            let r = must(
                n.port,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            );
            assert_eq!(r, Reply::Status("OK".into()), "ADDSLOTSRANGE");
        }
        wait_until("every node sees the whole cluster", || {
            nodes.iter().all(|n| {
                let info = must(n.port, &["CLUSTER", "INFO"]).text();
                let known = must(n.port, &["CLUSTER", "NODES"]).text().lines().count();
                info.contains("cluster_state:ok") && known == nodes.len()
            })
        });
        RedisCluster { nodes, _dir: dir }
    }

    /// The store spec: `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every key of every node that starts with `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<(u16, String)> {
        let mut all = Vec::new();
        for n in &self.nodes {
            for k in must(n.port, &["KEYS", &format!("{prefix}*")]).items() {
                all.push((n.port, k.text()));
            }
        }
        all.sort();
        all
    }

    /// The hash slot of `key`.
    pub fn slot(&self, key: &str) -> i64 {
        match must(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]) {
            Reply::Int(n) => n,
            other => panic!("KEYSLOT {key}: {other:?}"),
        }
    }
}

/// A primary, its replica and two Sentinels watching them (quorum 1).
pub struct RedisSentinel {
    pub primary: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().expect("tempdir for sentinel");
        // No wait before a full sync (5 s by default, for more replicas to join it).
        let quick = || vec!["--repl-diskless-sync-delay".to_owned(), "0".to_owned()];
        let primary = start_node(&dir.path().join("primary"), |_| quick());
        let replica = start_node(&dir.path().join("replica"), |_| {
            let mut args = quick();
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ]);
            args
        });
        let sentinels: Vec<Node> = (0..2)
            .map(|i| {
                let sdir = dir.path().join(format!("sentinel{i}"));
                start_node(&sdir, |port| {
                    let conf = sdir.join("sentinel.conf");
                    std::fs::write(
                        &conf,
                        format!(
                            "port {port}\nsentinel monitor {SERVICE} 127.0.0.1 {p} 1\n\
                             sentinel down-after-milliseconds {SERVICE} 1000\n\
                             sentinel failover-timeout {SERVICE} 5000\n",
                            p = primary.port
                        ),
                    )
                    .expect("sentinel.conf");
                    vec![conf.display().to_string(), "--sentinel".into()]
                })
            })
            .collect();
        let set = RedisSentinel {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        wait_until("the replica is in sync", || {
            must(set.replica.port, &["INFO", "replication"])
                .text()
                .contains("master_link_status:up")
        });
        set
    }

    /// The store spec: `redis+sentinel://` with both Sentinels.
    pub fn url(&self) -> String {
        let s: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", s.join(","))
    }

    /// The port of the server every Sentinel names as the primary (`None` while they differ).
    pub fn named_primary(&self) -> Option<u16> {
        let ports: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| {
                must(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                    .items()
                    .get(1)
                    .and_then(|p| p.text().parse().ok())
            })
            .collect();
        ports
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| ports[0])
            .flatten()
    }

    /// `SENTINEL FAILOVER` (a manual failover: the old primary stays up), then waits until
    /// every Sentinel names the replica and it has taken the role.
    pub fn failover(&self) {
        // Sentinels learn of replicas from the primary's INFO, a few seconds after they start.
        wait_until("every Sentinel knows the replica", || {
            self.sentinels.iter().all(|s| {
                must(s.port, &["SENTINEL", "REPLICAS", SERVICE])
                    .items()
                    .iter()
                    .any(|r| {
                        let r = r.text();
                        r.contains(&format!("port {}", self.replica.port))
                            && r.contains("flags slave ")
                    })
            })
        });
        wait_until("Sentinel accepts the failover", || {
            must(self.sentinels[0].port, &["SENTINEL", "FAILOVER", SERVICE])
                == Reply::Status("OK".into())
        });
        wait_until("the replica is promoted", || {
            self.named_primary() == Some(self.replica.port)
                && must(self.replica.port, &["ROLE"])
                    .items()
                    .first()
                    .is_some_and(|r| r.text() == "master")
        });
    }
}
