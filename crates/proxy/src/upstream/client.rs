//! The HTTP client the upstreams relay through: hyper's pooled HTTP/1.1 client (http and https,
//! TLS by rustls with the platform's roots), one pool per thread.
//!
//! A request made on a worker thread (see [`crate::runtime::Workers`]) uses that thread's pool,
//! whose connections are driven by that thread too: relaying a request never hands it to another
//! thread. Requests are built once per upstream (the URL is parsed when the upstream is created),
//! and redirects are followed the way MCP clients follow them: `307`/`308` for any method (same
//! method and body), `301`/`302`/`303` for `GET`. A request carrying credentials (any header
//! beyond the protocol's own) is not redirected to another origin at all.

use super::destinations::{Destinations, GuardedResolver};
use crate::error::ProxyError;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::cell::RefCell;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Connect timeout of the proxy's HTTP clients (upstreams, health checks, token endpoints).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An upstream's answer; its body streams.
pub type Response = http::Response<Incoming>;

/// How many redirects one request may follow.
const MAX_REDIRECTS: usize = 10;
/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

type Pool = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

thread_local! {
    /// This thread's pools, by client id.
    static POOLS: RefCell<Vec<(u64, Pool)>> = const { RefCell::new(Vec::new()) };
}

/// Why a request got no answer.
#[derive(Debug)]
pub struct ClientError {
    connect: bool,
    message: String,
}

impl ClientError {
    /// Nothing reached the upstream: the connection could not be made.
    pub fn is_connect(&self) -> bool {
        self.connect
    }

    fn new(connect: bool, message: String) -> Self {
        ClientError { connect, message }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for ClientError {}

/// The HTTP client of the upstreams (cheap to clone; clones share their pools).
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// For requests off the relay path (health checks, token endpoints, replicas).
    shared: reqwest::Client,
    /// Tells this client's per-thread pools apart from those of other clients.
    id: u64,
    connect_timeout: Duration,
    /// Built once (loading the platform's roots takes milliseconds), shared by every pool.
    tls: Arc<rustls::ClientConfig>,
    /// Where this client may connect (`None`: anywhere), enforced when names are resolved.
    destinations: Option<Arc<Destinations>>,
}

impl HttpClient {
    /// A client with TCP_NODELAY and a connect timeout.
    pub fn new(connect_timeout: Duration) -> Result<Self, ProxyError> {
        Self::build(connect_timeout, None)
    }

    /// A client (with its own pools) that connects only where `destinations` allows: a name
    /// resolving to a refused address fails to connect. Address literals are not resolved:
    /// check them with [`Destinations::check`] before sending.
    pub fn restricted(&self, destinations: Destinations) -> Result<Self, ProxyError> {
        Self::build(self.connect_timeout, Some(Arc::new(destinations)))
    }

    fn build(
        connect_timeout: Duration,
        destinations: Option<Arc<Destinations>>,
    ) -> Result<Self, ProxyError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut shared = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .redirect(reqwest_redirects())
            .no_proxy();
        if let Some(d) = &destinations {
            shared = shared.dns_resolver(ReqwestResolver(GuardedResolver::new(Some(d.clone()))));
        }
        let shared = shared
            .build()
            .map_err(|e| ProxyError::UpstreamConnect(format!("cannot build HTTP client: {e}")))?;
        use hyper_rustls::ConfigBuilderExt;
        // Fail at start-up, not on the first request, if TLS cannot be set up.
        let tls = rustls::ClientConfig::builder()
            .try_with_platform_verifier()
            .map_err(|e| ProxyError::UpstreamConnect(format!("cannot set up TLS: {e}")))?
            .with_no_client_auth();
        Ok(HttpClient {
            shared,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
            tls: Arc::new(tls),
            destinations,
        })
    }

    /// The process-wide `reqwest` client, for requests off the relay path.
    pub fn client(&self) -> &reqwest::Client {
        &self.shared
    }

    /// The calling thread's pool (built on first use).
    fn local(&self) -> Pool {
        POOLS.with(|p| {
            let mut pools = p.borrow_mut();
            if let Some((_, c)) = pools.iter().find(|(id, _)| *id == self.id) {
                return c.clone();
            }
            let resolver = GuardedResolver::new(self.destinations.clone());
            let c = pool(self.connect_timeout, &self.tls, resolver);
            pools.push((self.id, c.clone()));
            c
        })
    }

    /// Send the request `build` makes on this thread's pool, following redirects (`build` is
    /// called again for each redirect, so nothing is copied in case one comes).
    pub async fn send(
        &self,
        build: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<Response, ClientError> {
        let pool = self.local();
        let mut req = build();
        for _ in 0..=MAX_REDIRECTS {
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let resp = pool.request(req).await.map_err(|e| {
                let connect = e.is_connect();
                ClientError::new(connect, chain(&e))
            })?;
            let Some(to) = location(&resp, &uri) else {
                return Ok(resp);
            };
            let status = resp.status();
            let keeps_method = matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            );
            if !keeps_method && method != Method::GET {
                // A POST redirected with 301/302/303 would become a GET: not an MCP message.
                return Ok(resp);
            }
            req = build();
            // Names are checked by the resolver; an address literal is not resolved.
            if let Some(d) = &self.destinations
                && let Some(ip) = to
                    .host()
                    .and_then(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
                && !d.allows_ip(ip)
            {
                return Err(ClientError::new(
                    false,
                    format!("the upstream redirected to {ip}, a destination that is not allowed"),
                ));
            }
            if !same_origin(&to, &uri) {
                // Credentials are for the origin they were given for: a request that carries
                // any header beyond the protocol's own (configured headers, a bearer token,
                // cookies) is not sent elsewhere at all — neither its headers nor its body.
                if let Some(name) = req.headers().keys().find(|h| !is_protocol_header(h)) {
                    return Err(ClientError::new(
                        false,
                        format!(
                            "the upstream redirected to another origin ({}) and the request \
                             carries credentials (`{name}`), so it was not followed; configure \
                             the upstream's final URL",
                            origin(&to)
                        ),
                    ));
                }
            }
            tracing::debug!(%status, location = %to, "following the upstream's redirect");
            *req.uri_mut() = to;
        }
        Err(ClientError::new(
            false,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }
}

/// Same scheme, host and port.
fn same_origin(a: &Uri, b: &Uri) -> bool {
    a.scheme() == b.scheme() && a.authority() == b.authority()
}

/// `scheme://host[:port]` of a URI (no user info, path or query: those may carry secrets).
fn origin(u: &Uri) -> String {
    let scheme = u.scheme_str().unwrap_or("http");
    match u.authority() {
        Some(a) => match a.port_u16() {
            Some(p) => format!("{scheme}://{}:{p}", a.host()),
            None => format!("{scheme}://{}", a.host()),
        },
        None => format!("{scheme}://"),
    }
}

/// Headers the MCP transport itself sets, which carry no credentials. Anything else on an
/// upstream request is a configured header or a token.
fn is_protocol_header(name: &header::HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "accept"
            | "content-type"
            | "user-agent"
            | "last-event-id"
            | "mcp-session-id"
            | "mcp-protocol-version"
            | "mcp-method"
            | "mcp-name"
    ) || n.starts_with("mcp-param-")
}

/// The redirect policy of the `reqwest` client (requests off the relay path, the legacy SSE
/// upstream): redirects within the origin are followed; one to another origin is not (its
/// answer is the redirect), since the request may carry configured headers `reqwest` would not
/// strip.
fn reqwest_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(prev) = attempt.previous().last() else {
            return attempt.follow();
        };
        let next = attempt.url();
        let same = next.scheme() == prev.scheme()
            && next.host_str() == prev.host_str()
            && next.port_or_known_default() == prev.port_or_known_default();
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if same {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// [`GuardedResolver`] as `reqwest` wants a resolver.
struct ReqwestResolver(GuardedResolver);

impl reqwest::dns::Resolve for ReqwestResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let mut r = self.0.clone();
        let name = name
            .as_str()
            .parse::<hyper_util::client::legacy::connect::dns::Name>();
        Box::pin(async move {
            let name = name.map_err(|e| Box::new(e) as Box<dyn StdError + Send + Sync>)?;
            let addrs = tower_service::Service::call(&mut r, name).await?;
            Ok(Box::new(addrs) as reqwest::dns::Addrs)
        })
    }
}

fn pool(connect_timeout: Duration, tls: &rustls::ClientConfig, resolver: GuardedResolver) -> Pool {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(https)
}

/// Where a redirect points, resolved against the URL that answered; `None` if it is not a
/// redirect or has no usable `Location`.
fn location(resp: &Response, base: &Uri) -> Option<Uri> {
    if !matches!(
        resp.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    ) {
        return None;
    }
    let loc = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    let base = reqwest::Url::parse(&base.to_string()).ok()?;
    let to = base.join(loc).ok()?;
    if !matches!(to.scheme(), "http" | "https") {
        return None;
    }
    to.as_str().parse().ok()
}

/// An error and its causes, `: `-separated (hyper's own message is terse).
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Build a request to `uri` with these headers and body.
pub fn request(
    method: Method,
    uri: &Uri,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    req
}

/// `Content-Type`/`Accept` of a POST carrying a JSON-RPC message.
pub fn json_post_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Request as AxumRequest;
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;

    /// A server whose `/to/PATH` answers `STATUS` with `Location: PATH` (`STATUS` from the
    /// `x-status` header, 307 by default) and whose other paths echo method, path, body and
    /// `authorization`.
    async fn server() -> String {
        let app = axum::Router::new().fallback(|req: AxumRequest| async move {
            let path = req.uri().path().to_string();
            // `/away/PORT/PATH`: 307 to PATH on 127.0.0.1:PORT (another origin).
            if let Some((port, rest)) = path.strip_prefix("/away/").and_then(|r| r.split_once('/'))
            {
                let to = format!("http://127.0.0.1:{port}/{rest}");
                return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response();
            }
            if let Some(to) = path.strip_prefix("/to") {
                let status = req
                    .headers()
                    .get("x-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(307);
                let to = req
                    .headers()
                    .get("x-location")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .unwrap_or_else(|| to.to_string());
                let status = StatusCode::from_u16(status).expect("status");
                return (status, [(header::LOCATION, to)]).into_response();
            }
            let method = req.method().to_string();
            let (auth, key) = {
                let h = |name| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                (h(header::AUTHORIZATION.as_str()), h("x-api-key"))
            };
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let body = String::from_utf8_lossy(&body);
            if key == "-" {
                format!("{method} {path} {auth} {body}").into_response()
            } else {
                format!("{method} {path} {auth} {key} {body}").into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn call(
        c: &HttpClient,
        method: Method,
        url: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut headers = vec![("authorization", "Bearer t")];
        headers.extend_from_slice(extra);
        call_with(c, method, url, &headers).await.expect("sent")
    }

    async fn call_with(
        c: &HttpClient,
        method: Method,
        url: &str,
        extra: &[(&str, &str)],
    ) -> Result<(StatusCode, String), ClientError> {
        let uri: Uri = url.parse().expect("uri");
        let mut headers = http::HeaderMap::new();
        for (k, v) in extra {
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let resp = c
            .send(|| request(method.clone(), &uri, &headers, Bytes::from_static(b"{}")))
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    #[tokio::test]
    async fn redirects_are_followed_like_mcp_clients_do() {
        let c = HttpClient::new(Duration::from_secs(5)).expect("client");
        let a = server().await;
        // 307/308 keep the method and the body, and the credentials on the same origin.
        let (s, b) = call(&c, Method::POST, &format!("{a}/to/mcp/"), &[]).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "POST /mcp/ Bearer t {}"));
        // A POST is not turned into a GET: the 303 is the answer.
        let (s, _) = call(
            &c,
            Method::POST,
            &format!("{a}/to/x"),
            &[("x-status", "303")],
        )
        .await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        // A GET follows 302.
        let (s, b) = call(
            &c,
            Method::GET,
            &format!("{a}/to/sse"),
            &[("x-status", "302")],
        )
        .await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "GET /sse Bearer t {}"));
        // Configured headers stay with their origin too.
        let (s, b) = call_with(
            &c,
            Method::POST,
            &format!("{a}/to/mcp"),
            &[("x-api-key", "k1")],
        )
        .await
        .expect("same origin");
        assert_eq!((s, b.as_str()), (StatusCode::OK, "POST /mcp - k1 {}"));
        // Another origin gets neither the credentials (bearer token or any configured header)
        // nor the body: a credentialed request is not redirected there at all.
        let other = server().await;
        let port = other.rsplit(':').next().unwrap();
        for creds in [
            ("authorization", "Bearer t"),
            ("x-api-key", "k1"),
            ("cookie", "c=1"),
        ] {
            let err = call_with(
                &c,
                Method::POST,
                &format!("{a}/away/{port}/mcp"),
                &[creds, ("content-type", "application/json")],
            )
            .await
            .expect_err("not followed");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("another origin (http://127.0.0.1:{port})"))
                    && msg.contains(creds.0),
                "{msg}"
            );
            assert!(!err.is_connect());
        }
        // A request with only the protocol's headers is followed there, as MCP clients do.
        let (s, b) = call_with(
            &c,
            Method::POST,
            &format!("{a}/away/{port}/mcp"),
            &[
                ("content-type", "application/json"),
                ("mcp-session-id", "s1"),
                ("mcp-protocol-version", "2025-06-18"),
            ],
        )
        .await
        .expect("followed");
        assert_eq!((s, b.as_str()), (StatusCode::OK, "POST /mcp - {}"));
        // A redirect loop ends with an error, not a hang.
        let err = c
            .send(|| {
                let uri: Uri = format!("{a}/to/to/x").parse().expect("uri");
                let mut h = http::HeaderMap::new();
                h.insert("x-location", HeaderValue::from_static("/to/again"));
                request(Method::GET, &uri, &h, Bytes::new())
            })
            .await
            .expect_err("loop");
        assert!(err.to_string().contains("redirects"), "{err}");
        // Nothing listening: a connect error.
        let err = c
            .send(|| {
                let uri: Uri = "http://127.0.0.1:9/mcp".parse().expect("uri");
                request(Method::POST, &uri, &http::HeaderMap::new(), Bytes::new())
            })
            .await
            .expect_err("refused");
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn a_restricted_client_is_not_redirected_to_a_refused_address() {
        let c = HttpClient::new(Duration::from_secs(5))
            .expect("client")
            .restricted(Destinations::default())
            .expect("restricted");
        let a = server().await;
        let other = server().await;
        let port = other.rsplit(':').next().unwrap();
        let err = call_with(&c, Method::POST, &format!("{a}/away/{port}/mcp"), &[])
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("not allowed"), "{err}");
        // Allowed there: followed.
        let allowed = Destinations::parse(&["127.0.0.1".into()]).unwrap();
        let c = c.restricted(allowed).expect("restricted");
        let (s, _) = call_with(&c, Method::POST, &format!("{a}/away/{port}/mcp"), &[])
            .await
            .expect("followed");
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_reqwest_client_follows_redirects_within_the_origin_only() {
        let c = HttpClient::new(Duration::from_secs(5)).expect("client");
        let a = server().await;
        let other = server().await;
        let r = c
            .client()
            .get(format!("{a}/to/sse"))
            .header("x-api-key", "k1")
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "GET /sse - k1 ");
        // Another origin: the redirect is the answer; the configured header never goes there.
        let r = c
            .client()
            .get(format!("{a}/to"))
            .header("x-api-key", "k1")
            .header("x-location", format!("{other}/sse"))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    }
}
