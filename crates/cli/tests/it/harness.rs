//! Test harness: start proxies, demo servers and peers as real processes (one launcher:
//! [`Launch`]), talk raw HTTP to them, read their SSE (one reader: [`SseStream`]), and count
//! their child processes.

mod launch;
mod sse;

pub use launch::{Launch, Process, Server, bin, lossy, run};
pub use sse::{EventExt, SseEvent, SseStream, parse_events};

use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

/// Generous: these machines are noisy (a loaded 2-core box spawning 200 children is slow).
pub const WAIT: Duration = Duration::from_secs(60);

/// Direct and indirect children of `pid` (read from /proc).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // Fields after the command name (which is in parentheses and may contain spaces).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let state = fields.first().copied().unwrap_or("");
            if state == "Z" {
                continue;
            }
            if let Some(ppid) = fields.get(1).and_then(|f| f.parse::<u32>().ok()) {
                all.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &all {
            if *pp == parent {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// Wait until `pid` has exactly `n` descendants.
pub async fn wait_descendants(pid: u32, n: usize) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = descendants(pid);
        if d.len() == n {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} child processes of {pid}, found {}: {d:?}",
            d.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A raw Streamable HTTP client: exact statuses and headers, JSON or SSE bodies.
#[derive(Clone)]
pub struct Raw {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
    pub version: &'static str,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// JSON-RPC messages of the body (one JSON value, or the data of every SSE event that has
    /// some).
    pub fn messages(&self) -> Vec<Value> {
        if self.content_type().starts_with("text/event-stream") {
            parse_events(&self.body)
                .iter()
                .filter_map(EventExt::json)
                .collect()
        } else if self.body.is_empty() {
            vec![]
        } else {
            match self.json() {
                Value::Array(items) => items,
                v => vec![v],
            }
        }
    }
    /// The JSON-RPC error code of the body.
    pub fn rpc_code(&self) -> i64 {
        self.json()["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no JSON-RPC error: {}", self.body))
    }
}

pub fn init_body(id: i64, version: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name":"raw-test","version":"1"}}})
}

impl Raw {
    pub fn new(url: String) -> Raw {
        Raw {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            url,
            session: None,
            version: "2025-06-18",
        }
    }

    pub fn post_builder(&self, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = &self.session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", self.version);
        }
        r
    }

    pub async fn send(req: reqwest::RequestBuilder) -> Reply {
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("HTTP timeout")
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(WAIT, resp.text())
            .await
            .expect("body timeout")
            .expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, body: Value) -> Reply {
        Raw::send(self.post_builder(body.to_string())).await
    }

    /// initialize + notifications/initialized; remembers the session id.
    pub async fn initialize(&mut self) -> Reply {
        let r = self.post(init_body(0, self.version)).await;
        assert_eq!(r.status, 200, "initialize: {}", r.body);
        let sid = r
            .headers
            .get("mcp-session-id")
            .expect("session id header")
            .to_str()
            .unwrap()
            .to_string();
        self.session = Some(sid);
        let n = self
            .post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        assert_eq!(n.status, 202, "initialized: {}", n.body);
        r
    }

    /// Call a tool and return the text of its first content item.
    pub async fn call_tool(&self, id: i64, name: &str, args: Value) -> String {
        let r = self
            .post(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}}))
            .await;
        assert_eq!(r.status, 200, "tools/call {name}: {}", r.body);
        let msgs = r.messages();
        let reply = msgs
            .iter()
            .find(|m| m["id"] == json!(id))
            .unwrap_or_else(|| panic!("no reply: {}", r.body));
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text in {reply}"))
            .to_string()
    }

    pub async fn delete(&self) -> Reply {
        let mut r = self.http.delete(&self.url);
        if let Some(s) = &self.session {
            r = r.header("mcp-session-id", s);
        }
        Raw::send(r).await
    }
}

/// A private redis-server on a unix socket in a temp dir, killed on drop.
pub struct Redis {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Redis { dir, child: None };
        r.restart();
        r
    }

    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The store spec for `--store`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    pub fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("SHADOWCAT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(self.socket())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); install Debian's redis-server"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound then released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
