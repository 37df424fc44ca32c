//! A minimal Streamable HTTP MCP client on hyper's HTTP/1.1 connection API: one TCP connection per
//! worker (keep-alive, no pool, no proxy), requests written by hand.

use crate::mcp::{self, SseDecoder, SseEvent};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Set `TCP_QUICKACK` after every read (see [`QuickAck`]).
pub static QUICKACK: AtomicBool = AtomicBool::new(false);

/// A TCP stream that re-arms `TCP_QUICKACK` after every read, so this side ACKs at once instead
/// of delaying ACKs up to 40 ms. A server that writes a response in several small segments
/// without `TCP_NODELAY` waits for that ACK (Nagle) before sending the rest: with quick ACKs the
/// generator does not take part in that stall, so what remains is the server's own latency.
/// Off by default: real clients delay their ACKs.
pub struct QuickAck {
    inner: TcpStream,
    on: bool,
}

impl QuickAck {
    fn rearm(&self) {
        if self.on {
            let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.rearm();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the MCP endpoint is.
#[derive(Debug)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: String,
}

impl HttpTarget {
    /// `http://HOST:PORT/PATH`; HOST is resolved once, here.
    pub async fn parse(url: &str) -> anyhow::Result<Arc<HttpTarget>> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported: {url}");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL without host: {url}"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .ok_or_else(|| anyhow!("no address for {}", authority.host()))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        Ok(Arc::new(HttpTarget {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            path,
        }))
    }
}

/// The session state a client carries in headers.
#[derive(Debug, Clone)]
pub struct HttpSession {
    pub id: Option<HeaderValue>,
    pub version: HeaderValue,
}

/// A whole reply.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub is_sse: bool,
    pub session_id: Option<HeaderValue>,
    pub body: Bytes,
}

impl Reply {
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        mcp::payloads(self.is_sse, &self.body)
    }
}

/// An SSE response body, read event by event (each with the time its bytes arrived).
pub struct SseBody {
    body: Incoming,
    dec: SseDecoder,
    decoded: Vec<SseEvent>,
    ready: VecDeque<(Instant, SseEvent)>,
}

impl SseBody {
    pub fn new(body: Incoming) -> SseBody {
        SseBody {
            body,
            dec: SseDecoder::default(),
            decoded: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event that has an id or data; `None` at the end of the body.
    pub async fn next(&mut self) -> anyhow::Result<Option<(Instant, SseEvent)>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(Some(ev));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.context("reading the stream")?;
            let at = Instant::now();
            if let Ok(data) = frame.into_data() {
                self.dec.feed_events(&data, &mut self.decoded);
                self.ready.extend(self.decoded.drain(..).map(|ev| (at, ev)));
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    target: Arc<HttpTarget>,
    tx: Option<SendRequest<Full<Bytes>>>,
}

pub fn is_sse(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

impl Conn {
    pub fn new(target: Arc<HttpTarget>) -> Conn {
        Conn { target, tx: None }
    }

    pub fn target(&self) -> &Arc<HttpTarget> {
        &self.target
    }

    /// Open a new connection (replacing the current one, if any).
    pub async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .with_context(|| format!("connect {}", self.target.addr))?;
        stream.set_nodelay(true)?;
        let stream = QuickAck {
            inner: stream,
            on: QUICKACK.load(Ordering::Relaxed),
        };
        stream.rearm();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(self.tx.insert(tx))
    }

    /// Build a request to the MCP endpoint.
    pub fn request(
        &self,
        method: http::Method,
        session: Option<&HttpSession>,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = self.target.path.parse().expect("path was parsed before");
        let h = req.headers_mut();
        h.insert(header::HOST, self.target.host.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Some(s) = session {
            if let Some(id) = &s.id {
                h.insert("mcp-session-id", id.clone());
            }
            h.insert("mcp-protocol-version", s.version.clone());
        }
        req
    }

    /// A `GET` of the session's server→client stream; with `last_event_id`, a resumption of the
    /// stream that id belongs to.
    pub fn get_request(
        &self,
        session: &HttpSession,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut req = self.request(http::Method::GET, Some(session), Bytes::new());
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        h.remove(header::CONTENT_TYPE);
        if let Some(id) = last_event_id {
            h.insert("last-event-id", HeaderValue::from_str(id)?);
        }
        Ok(req)
    }

    /// Send a request (connecting first if the connection is closed) and return the response
    /// head; the body is read by the caller.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>> {
        if self.tx.as_ref().is_none_or(SendRequest::is_closed) {
            self.connect().await?;
        }
        let tx = self.tx.as_mut().expect("connected");
        if tx.ready().await.is_err() {
            // The server closed the idle connection: that is not the request's fault.
            self.connect().await?.ready().await?;
        }
        let tx = self.tx.as_mut().expect("connected");
        match tx.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.tx = None;
                Err(e.into())
            }
        }
    }

    /// POST `body` and read the whole reply.
    pub async fn post(
        &mut self,
        session: Option<&HttpSession>,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let req = self.request(http::Method::POST, session, body);
        let resp = self.send(req).await?;
        let status = resp.status();
        let sse = is_sse(&resp);
        let session_id = resp.headers().get("mcp-session-id").cloned();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.tx = None;
                return Err(anyhow!(e).context("reading the reply body"));
            }
        };
        Ok(Reply {
            status,
            is_sse: sse,
            session_id,
            body,
        })
    }

    /// `initialize` + `notifications/initialized`: a new MCP session.
    pub async fn handshake(&mut self) -> anyhow::Result<HttpSession> {
        self.handshake_as(mcp::PROTOCOL_VERSION).await
    }

    /// A new MCP session, asking for protocol `version`.
    pub async fn handshake_as(&mut self, version: &str) -> anyhow::Result<HttpSession> {
        let reply = self.post(None, mcp::initialize_as(version)).await?;
        if reply.status != StatusCode::OK {
            bail!(
                "initialize: HTTP {}: {}",
                reply.status,
                mcp::truncate(&String::from_utf8_lossy(&reply.body), 300)
            );
        }
        let mut version = None;
        for data in reply.payloads() {
            let msg = mcp::parse(&data)?;
            if msg.is_response() && msg.num_id() == Some(0) {
                if let Some(err) = msg.error {
                    bail!("initialize failed: {}", err.get());
                }
                #[derive(serde::Deserialize)]
                struct Init {
                    #[serde(rename = "protocolVersion")]
                    protocol_version: String,
                }
                let init: Init = serde_json::from_str(
                    msg.result
                        .ok_or_else(|| anyhow!("initialize: no result"))?
                        .get(),
                )
                .context("initialize result")?;
                version = Some(init.protocol_version);
            }
        }
        let version = version.ok_or_else(|| anyhow!("initialize: no response in the reply"))?;
        let session = HttpSession {
            id: reply.session_id,
            version: HeaderValue::from_str(&version)?,
        };
        let reply = self.post(Some(&session), mcp::initialized()).await?;
        if !reply.status.is_success() {
            bail!("notifications/initialized: HTTP {}", reply.status);
        }
        Ok(session)
    }

    /// DELETE the session (best effort).
    pub async fn delete(&mut self, session: &HttpSession) -> anyhow::Result<StatusCode> {
        let req = self.request(http::Method::DELETE, Some(session), Bytes::new());
        let resp = self.send(req).await?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}

/// Try `initialize` on `url` until it works or `timeout` passes (used to wait for a server).
pub async fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = HttpTarget::parse(url).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut conn = Conn::new(target.clone());
        match conn.handshake().await {
            Ok(s) => {
                let _ = conn.delete(&s).await;
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("{url} not ready after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
