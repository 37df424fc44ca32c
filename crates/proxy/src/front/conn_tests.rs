//! The listeners' connection timeouts and limit, with raw TCP clients (the HTTP front and the
//! admin listener). No timing is asserted: each test waits for the close it expects, and a
//! generous guard turns a connection that is never closed into a failure instead of a hang.

use super::conn::ConnLimits;
use super::http::{HostPolicy, HttpFront, HttpFrontConfig, Targets};
use crate::admin::AdminServer;
use crate::pipeline::Pipeline;
use crate::upstream::{HttpClient, UpstreamSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a test waits for a close that must come (a hang guard, not a timing assertion).
const GUARD: Duration = Duration::from_secs(30);

const LONG: Duration = Duration::from_secs(3600);

fn limits() -> ConnLimits {
    ConnLimits {
        header_timeout: LONG,
        body_timeout: LONG,
        idle_timeout: LONG,
        max_connections: 10_000,
    }
}

/// A running HTTP front (its `/mcp` target a command that is never started by these tests).
struct Front {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn front(conn: ConnLimits) -> Front {
    front_with(conn, HostPolicy::default(), "127.0.0.1:0").await
}

async fn front_with(conn: ConnLimits, hosts: HostPolicy, bind: &str) -> Front {
    let config = HttpFrontConfig {
        hosts,
        targets: Targets {
            default: Some(UpstreamSpec::stdio("true", Vec::new())),
            ..Targets::default()
        },
        workers: 1,
        conn,
        ..HttpFrontConfig::default()
    };
    let cancel = CancellationToken::new();
    let front = HttpFront::new(
        config,
        Pipeline::new(Vec::new()),
        HttpClient::new(Duration::from_secs(1)).unwrap(),
        Arc::new(shadowcat_store::MemoryStore::new()),
        cancel.clone(),
        TaskTracker::new(),
    )
    .unwrap();
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::spawn(front.serve(listener, || {}));
    Front { addr, cancel }
}

async fn admin(conn: ConnLimits) -> Front {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = AdminServer::new(None).limits(conn);
    tokio::spawn(server.serve(listener, cancel.clone()));
    Front { addr, cancel }
}

/// Read until the server closes the connection; what it sent before.
async fn until_closed(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(GUARD, async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was not closed (got {:?})",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// One complete response (head + `Content-Length` body), or `None` if the connection closed
/// first.
async fn response(c: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
        match tokio::time::timeout(GUARD, c.read(&mut buf)).await {
            Err(_) => panic!("no response and no close"),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get(c: &mut TcpStream, path: &str) -> Option<String> {
    get_as(c, path, "127.0.0.1").await
}

async fn get_as(c: &mut TcpStream, path: &str, host: &str) -> Option<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if c.write_all(req.as_bytes()).await.is_err() {
        return None;
    }
    response(c).await
}

const HALF_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

#[tokio::test]
async fn half_heads_and_silent_connections_are_closed_after_the_header_timeout() {
    let f = front(ConnLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(f.addr).await.unwrap();
        c.write_all(HALF_HEAD).await.unwrap();
        slow.push(c);
    }
    let mut silent = TcpStream::connect(f.addr).await.unwrap();
    for mut c in slow {
        assert_eq!(until_closed(&mut c).await, "");
    }
    assert_eq!(until_closed(&mut silent).await, "");
    // A connection that sends its head in time is served.
    let mut ok = TcpStream::connect(f.addr).await.unwrap();
    let r = get(&mut ok, "/health").await.expect("served");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_the_connection_is_closed() {
    let f = front(ConnLimits {
        body_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(f.addr).await.unwrap();
    c.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"",
    )
    .await
    .unwrap();
    let got = until_closed(&mut c).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert!(
        got.contains("-32600") && got.contains("did not arrive"),
        "{got}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let f = front(ConnLimits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(f.addr).await.unwrap();
    let r = get(&mut c, "/health").await.expect("served");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The header timeout is an hour: only the idle timer can close it.
    assert_eq!(until_closed(&mut c).await, "");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_until_one_ends() {
    let f = front(ConnLimits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(f.addr).await.unwrap();
        let r = get(&mut c, "/health").await.expect("served");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        held.push(c);
    }
    // Both held open (keep-alive): the third is accepted and closed unanswered.
    let mut third = TcpStream::connect(f.addr).await.unwrap();
    assert_eq!(get(&mut third, "/health").await, None);
    for c in &mut held {
        let r = get(c, "/health").await.expect("still served");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // One ends: its slot comes free once the proxy has seen the close.
    drop(held.remove(0));
    let mut served = None;
    for _ in 0..200 {
        let mut c = TcpStream::connect(f.addr).await.unwrap();
        if let Some(r) = get(&mut c, "/health").await {
            served = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = served.expect("a connection is served again once one closed");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn the_admin_listener_has_the_same_timeouts_and_limit() {
    let a = admin(ConnLimits {
        header_timeout: Duration::from_millis(300),
        max_connections: 1,
        ..limits()
    })
    .await;
    let mut one = TcpStream::connect(a.addr).await.unwrap();
    let r = get(&mut one, "/api").await.expect("served");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let mut over = TcpStream::connect(a.addr).await.unwrap();
    assert_eq!(get(&mut over, "/api").await, None);
    drop(one);
    let mut slow = None;
    for _ in 0..200 {
        let mut c = TcpStream::connect(a.addr).await.unwrap();
        if let Some(r) = get(&mut c, "/api").await {
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            slow = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut slow = slow.expect("served again once the first closed");
    slow.write_all(HALF_HEAD).await.unwrap();
    assert_eq!(until_closed(&mut slow).await, "");
}

/// DNS rebinding without `Origin`: on a loopback listener only loopback and configured names
/// are served; elsewhere any name, unless names are configured.
#[tokio::test]
async fn host_names_are_checked_on_a_loopback_listener() {
    async fn status(f: &Front, path: &str, host: &str) -> String {
        let mut c = TcpStream::connect(f.addr).await.unwrap();
        let r = get_as(&mut c, path, host).await.expect("answered");
        r.lines().next().unwrap().to_string()
    }
    let named = HostPolicy::new(&["mcp.example.com".into()], None).unwrap();
    let f = front_with(limits(), named.clone(), "127.0.0.1:0").await;
    for ok in [
        "localhost:8080",
        "127.0.0.1",
        "[::1]:1",
        "mcp.example.com:8080",
    ] {
        assert_eq!(status(&f, "/health", ok).await, "HTTP/1.1 200 OK", "{ok}");
    }
    for path in ["/health", "/sse", "/mcp"] {
        let mut c = TcpStream::connect(f.addr).await.unwrap();
        let r = get_as(&mut c, path, "evil.example:8080").await.unwrap();
        assert!(r.starts_with("HTTP/1.1 403"), "{path}: {r}");
        assert!(r.contains("-32600") && r.contains("evil.example"), "{r}");
    }
    // Without names, a listener beyond loopback serves any name; with names, only those.
    let open = front_with(limits(), HostPolicy::default(), "0.0.0.0:0").await;
    assert_eq!(
        status(&open, "/health", "evil.example").await,
        "HTTP/1.1 200 OK"
    );
    let strict = front_with(limits(), named, "0.0.0.0:0").await;
    assert_eq!(
        status(&strict, "/health", "mcp.example.com").await,
        "HTTP/1.1 200 OK"
    );
    assert!(
        status(&strict, "/health", "evil.example")
            .await
            .contains("403")
    );
}
