//! A real headless Chromium driven over the DevTools protocol: open a page, evaluate
//! JavaScript in it. A page that keeps a stream open (the admin page follows live traffic)
//! never lets `--dump-dom --virtual-time-budget` finish (virtual time waits for pending
//! fetches), so tests ask the live page instead, over a minimal WebSocket client.

use super::harness::WAIT;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The browser binary: `$SHADOWCAT_CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> String {
    let found = match std::env::var_os("SHADOWCAT_CHROMIUM") {
        Some(p) => Some(std::path::PathBuf::from(p)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
                .find(|p| p.is_file())
        }),
    };
    match found {
        Some(p) => p.to_string_lossy().into_owned(),
        None => panic!(
            "Chromium is needed for the admin page test and is not installed: \
             `apt-get install chromium` (Debian; .ci/run installs it), or point \
             SHADOWCAT_CHROMIUM at a Chromium/Chrome binary"
        ),
    }
}

/// A headless Chromium showing one page; killed (with its whole process group) on drop.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Ws,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Browser {
    /// Start Chromium on `url` and attach to its page.
    pub async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&port_file)
                    && let Some(p) = text.lines().next().and_then(|l| l.trim().parse().ok())
                {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("chromium opens its DevTools port");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let ws_url = tokio::time::timeout(WAIT, async {
            loop {
                let targets: Value = match http
                    .get(format!("http://127.0.0.1:{port}/json/list"))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                let page = targets.as_array().and_then(|ts| {
                    ts.iter()
                        .find(|t| {
                            t["type"] == "page"
                                && t["url"].as_str().is_some_and(|u| u.starts_with("http"))
                        })
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                });
                if let Some(u) = page {
                    return u;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("chromium shows the page");
        Browser {
            child,
            _profile: profile,
            page: Ws::connect(&ws_url).await,
            next_id: 0,
        }
    }

    /// Evaluate `expression` in the page; its value (JSON).
    pub async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(v) => v,
            Err(e) => panic!("{expression} threw: {e}"),
        }
    }

    /// Evaluate `expression`; its value, or the exception it threw.
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.call("Runtime.evaluate", params).await;
        match result.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Show the page as a `width`×`height` window would.
    pub async fn resize(&mut self, width: u32, height: u32) {
        let size =
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", size).await;
    }

    /// A PNG of what the page shows.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG")
    }

    /// One DevTools command on the page; its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.page.send(&msg.to_string()).await;
        loop {
            let reply: Value = serde_json::from_str(&self.page.recv().await).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluate `expression` every 100 ms until `done` accepts its value; that value. While
    /// the page is still loading the expression may throw; that counts as not yet.
    pub async fn wait_for(&mut self, expression: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.try_eval(expression).await.unwrap_or_else(|e| e);
            if done(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed it; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Just enough of a WebSocket client (RFC 6455) for the DevTools protocol.
struct Ws {
    tcp: TcpStream,
}

impl Ws {
    async fn connect(url: &str) -> Ws {
        let rest = url.strip_prefix("ws://").expect("ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut tcp = TcpStream::connect(host).await.expect("connect to DevTools");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await.expect("DevTools handshake");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        Ws { tcp }
    }

    async fn write_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x5a, 0x13, 0xc7, 0x88];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await.unwrap();
    }

    async fn send(&mut self, text: &str) {
        self.write_frame(0x1, text.as_bytes()).await;
    }

    /// The next text message (continuations joined, pings answered).
    async fn recv(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            tokio::time::timeout(WAIT, self.tcp.read_exact(&mut h))
                .await
                .expect("DevTools answers in time")
                .expect("DevTools connection open");
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.tcp.read_exact(&mut b).await.unwrap();
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.tcp.read_exact(&mut b).await.unwrap();
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.tcp.read_exact(&mut payload).await.unwrap();
            match opcode {
                0x8 => panic!("DevTools closed the connection"),
                0x9 => self.write_frame(0xA, &payload).await,
                0xA => {}
                _ => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message).expect("text message");
                    }
                }
            }
        }
    }
}
