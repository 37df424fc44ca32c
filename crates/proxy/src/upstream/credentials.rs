//! Upstream credentials that change over time: an OAuth 2.1 client-credentials token, fetched
//! from the token endpoint on first use, cached, refreshed before it expires, and dropped when the
//! upstream answers `401`. (Static headers and a bearer from the environment are plain headers of
//! the upstream spec.)
//!
//! * One cache per client (token endpoint, client id, secret, scope, resource, audience): every
//!   upstream and session configured with the same client shares its token.
//! * Single flight: concurrent requests that need a token wait for one fetch and share its
//!   result (a failure included, so a dead endpoint costs one timeout, not one per request).
//! * A token is used until `refresh_before` ahead of its expiry (at most half its lifetime); the
//!   first request after that fetches the next one while concurrent requests keep using the
//!   current one until it actually expires. A token without `expires_in` is kept until a `401`.
//! * [`send`] attaches `Authorization: Bearer …` and, when the upstream answers `401` (it
//!   refused the request, so nothing was done), gets a new token and sends the request once more.

mod exchange;

pub use exchange::AuthMethod;

use crate::sync::lock;
use http::{HeaderValue, StatusCode, header};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why no token could be had (names the token endpoint and what went wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialError(pub String);

/// An OAuth client of a token endpoint (client-credentials grant).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OAuthClient {
    /// The token endpoint.
    pub token_url: String,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (never logged).
    pub client_secret: String,
    /// `scope` to ask for.
    pub scope: Option<String>,
    /// RFC 8707 `resource`: the upstream the token is for.
    pub resource: Option<String>,
    /// `audience` (for authorization servers that use it instead of `resource`).
    pub audience: Option<String>,
    /// How the client authenticates.
    pub auth_method: AuthMethod,
    /// Refresh this long before expiry (at most half the token's lifetime).
    pub refresh_before: Duration,
    /// Bound on one token request.
    pub timeout: Duration,
    /// RFC 8693 token exchange: the client's own (validated) token is exchanged for one meant
    /// for the upstream, per client token (`exchange` on, `subject_token` set per request by
    /// the gateway). Never logged.
    pub exchange: bool,
    /// The token to exchange (`exchange`): the client's bearer token.
    pub subject_token: Option<String>,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .field("audience", &self.audience)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

/// Credentials of one upstream, shared (cheap to clone). Equal when they use the same cache.
#[derive(Clone)]
pub struct Credentials(Arc<TokenSource>);

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.client == other.0.client
    }
}
impl Eq for Credentials {}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({})", self.describe())
    }
}

/// Live caches by client: a second upstream with the same client gets the same cache.
static SHARED: LazyLock<Mutex<HashMap<OAuthClient, Weak<TokenSource>>>> =
    LazyLock::new(Default::default);

/// Most client tokens whose exchanged tokens are kept (the least recently used go first).
const MAX_EXCHANGED: usize = 10_000;

/// Exchanged tokens by client token, kept (strongly) until they expire or the cache is full:
/// one exchange serves every session and stateless request of a client token.
static EXCHANGED: LazyLock<Mutex<Exchanged>> = LazyLock::new(Default::default);

/// A client token's exchange, and when it was last asked for.
type Exchanged = HashMap<OAuthClient, (Arc<TokenSource>, Instant)>;

impl Credentials {
    /// The client these credentials fetch tokens as.
    pub fn client(&self) -> &OAuthClient {
        &self.0.client
    }

    /// Credentials that exchange `subject_token` (a client's validated bearer token) with the
    /// client of `template` (its `exchange` on), cached per subject token.
    pub fn exchange(template: &OAuthClient, subject_token: &str) -> Credentials {
        let client = OAuthClient {
            subject_token: Some(subject_token.to_string()),
            ..template.clone()
        };
        let now = Instant::now();
        let mut cache = lock(&EXCHANGED);
        if let Some((s, used)) = cache.get_mut(&client) {
            *used = now;
            return Credentials(s.clone());
        }
        if cache.len() >= MAX_EXCHANGED {
            // Expired ones first, else the least recently used.
            cache.retain(|_, (s, _)| matches!(s.current(), Have::Fresh(_) | Have::Stale(_)));
            if cache.len() >= MAX_EXCHANGED
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        let s = Arc::new(TokenSource {
            client: client.clone(),
            cached: Mutex::new(None),
            gate: tokio::sync::Mutex::new(Outcome::default()),
        });
        cache.insert(client, (s.clone(), now));
        Credentials(s)
    }

    /// Credentials from the client-credentials grant (the cache is shared with every other
    /// upstream using the same client). Nothing is fetched until a token is needed.
    pub fn oauth(client: OAuthClient) -> Credentials {
        let mut shared = lock(&SHARED);
        shared.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = shared.get(&client).and_then(Weak::upgrade) {
            return Credentials(s);
        }
        let s = Arc::new(TokenSource {
            client: client.clone(),
            cached: Mutex::new(None),
            gate: tokio::sync::Mutex::new(Outcome::default()),
        });
        shared.insert(client, Arc::downgrade(&s));
        Credentials(s)
    }

    /// For logs: `oauth client ID at TOKEN_URL` (`token exchange by …` when exchanging).
    pub fn describe(&self) -> String {
        let c = &self.0.client;
        format!(
            "{} `{}` at {}",
            if c.exchange {
                "token exchange by oauth client"
            } else {
                "oauth client"
            },
            c.client_id,
            shadowcat_tape::redact::url_label(&c.token_url)
        )
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &str {
        &self.0.client.token_url
    }

    /// `Bearer TOKEN` for the next request (fetched or refreshed if needed).
    pub async fn bearer(&self) -> Result<HeaderValue, CredentialError> {
        self.0.bearer().await
    }

    /// The upstream refused `used` (HTTP 401): the next request fetches a new token, unless
    /// another request already did.
    pub fn invalidate(&self, used: &HeaderValue) {
        let mut cached = lock(&self.0.cached);
        if cached.as_ref().is_some_and(|c| c.value == used) {
            tracing::info!(endpoint = %self.0.client.token_url, "the upstream refused the access token; fetching a new one");
            *cached = None;
        }
    }
}

struct Cached {
    value: HeaderValue,
    /// From here on, the next request refreshes it.
    refresh_at: Option<Instant>,
    /// From here on, it is not used at all.
    expires_at: Option<Instant>,
}

/// What the last fetch did (waiters of the single flight read it).
#[derive(Default)]
struct Outcome {
    /// Incremented by every fetch.
    generation: u64,
    /// The last fetch's error, if it failed.
    error: Option<CredentialError>,
}

struct TokenSource {
    client: OAuthClient,
    cached: Mutex<Option<Cached>>,
    /// The single flight: held while fetching.
    gate: tokio::sync::Mutex<Outcome>,
}

enum Have {
    Fresh(HeaderValue),
    /// Valid, but due for a refresh.
    Stale(HeaderValue),
    None,
}

impl TokenSource {
    fn current(&self) -> Have {
        let now = Instant::now();
        match &*lock(&self.cached) {
            Some(c) if c.expires_at.is_some_and(|e| now >= e) => Have::None,
            Some(c) if c.refresh_at.is_some_and(|r| now >= r) => Have::Stale(c.value.clone()),
            Some(c) => Have::Fresh(c.value.clone()),
            None => Have::None,
        }
    }

    async fn bearer(&self) -> Result<HeaderValue, CredentialError> {
        match self.current() {
            Have::Fresh(v) => Ok(v),
            Have::Stale(v) => {
                // One request refreshes; the others keep using the valid token meanwhile.
                let Ok(mut gate) = self.gate.try_lock() else {
                    return Ok(v);
                };
                if let Have::Fresh(new) = self.current() {
                    return Ok(new);
                }
                match self.fetch(&mut gate).await {
                    Ok(new) => Ok(new),
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing the upstream access token failed; using the current one until it expires");
                        Ok(v)
                    }
                }
            }
            Have::None => {
                // `None`: a fetch is in progress.
                let seen = self.gate.try_lock().map(|g| g.generation).ok();
                let mut gate = self.gate.lock().await;
                if let Have::Fresh(v) | Have::Stale(v) = self.current() {
                    return Ok(v);
                }
                // A fetch finished while this request waited, and failed: share its error.
                if seen != Some(gate.generation)
                    && let Some(e) = &gate.error
                {
                    return Err(e.clone());
                }
                self.fetch(&mut gate).await
            }
        }
    }

    async fn fetch(&self, gate: &mut Outcome) -> Result<HeaderValue, CredentialError> {
        let c = &self.client;
        let started = Instant::now();
        let result = exchange::request(c).await;
        gate.generation += 1;
        match result {
            Ok(grant) => {
                gate.error = None;
                let (refresh_at, expires_at) = match grant.lifetime {
                    Some(life) => {
                        let margin = c.refresh_before.min(life / 2);
                        // A little slack: a token that expires in flight is refused.
                        let slack = (life / 10).min(Duration::from_secs(1));
                        (Some(started + life - margin), Some(started + life - slack))
                    }
                    None => (None, None),
                };
                tracing::info!(
                    endpoint = %c.token_url,
                    client_id = %c.client_id,
                    expires_in = ?grant.lifetime,
                    "fetched an upstream access token"
                );
                *lock(&self.cached) = Some(Cached {
                    value: grant.value.clone(),
                    refresh_at,
                    expires_at,
                });
                Ok(grant.value)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot get an upstream access token");
                gate.error = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// Why a request sent with credentials failed.
#[derive(Debug)]
pub enum SendError<E = reqwest::Error> {
    /// No token could be had.
    Credentials(CredentialError),
    /// The HTTP request failed.
    Http(E),
}

/// An HTTP answer's status (whatever client made the request).
pub trait HasStatus {
    /// The status.
    fn status(&self) -> StatusCode;
}

impl HasStatus for reqwest::Response {
    fn status(&self) -> StatusCode {
        reqwest::Response::status(self)
    }
}

impl<B> HasStatus for http::Response<B> {
    fn status(&self) -> StatusCode {
        http::Response::status(self)
    }
}

/// Make a request with `send`, given `Authorization: Bearer …` when there are credentials.
/// If the upstream answers `401`, the token is dropped and `send` called once more with a new
/// one (safe: the upstream refused the request, so nothing was done).
pub async fn authorized<R, E, Fut>(
    credentials: Option<&Credentials>,
    send: impl Fn(Option<HeaderValue>) -> Fut,
) -> Result<R, SendError<E>>
where
    R: HasStatus,
    Fut: Future<Output = Result<R, E>>,
{
    let Some(c) = credentials else {
        return send(None).await.map_err(SendError::Http);
    };
    let token = c.bearer().await.map_err(SendError::Credentials)?;
    let resp = send(Some(token.clone())).await.map_err(SendError::Http)?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    c.invalidate(&token);
    let token = c.bearer().await.map_err(SendError::Credentials)?;
    send(Some(token)).await.map_err(SendError::Http)
}

/// [`authorized`] for a `reqwest` request: `build` is called once per attempt.
pub async fn send(
    credentials: Option<&Credentials>,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, SendError> {
    authorized(credentials, |token| {
        let mut req = build();
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, t);
        }
        req.send()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Endpoint {
        calls: AtomicUsize,
        down: AtomicBool,
        expires_in: AtomicUsize,
        last: Mutex<Option<(String, String)>>,
    }

    /// A token endpoint: token `t<n>` for call n; 503 while `down`; 400 `invalid_client` for a
    /// wrong secret. Slow enough that concurrent callers overlap.
    async fn endpoint() -> (String, Arc<Endpoint>) {
        let state = Arc::new(Endpoint::default());
        state.expires_in.store(3600, Ordering::SeqCst);
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(
                    |State(s): State<Arc<Endpoint>>, h: HeaderMap, body: String| async move {
                        let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
                        let auth = h
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        *lock(&s.last) = Some((auth.clone(), body));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if s.down.load(Ordering::SeqCst) {
                            return (StatusCode::SERVICE_UNAVAILABLE, String::new());
                        }
                        // base64("id:good")
                        if auth != "Basic aWQ6Z29vZA==" {
                            return (
                                StatusCode::BAD_REQUEST,
                                r#"{"error":"invalid_client","error_description":"bad secret"}"#
                                    .to_string(),
                            );
                        }
                        let body = serde_json::json!({
                            "access_token": format!("t{n}"),
                            "token_type": "bearer",
                            "expires_in": s.expires_in.load(Ordering::SeqCst),
                        });
                        (StatusCode::OK, body.to_string())
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, state)
    }

    fn client(url: &str, secret: &str) -> OAuthClient {
        OAuthClient {
            exchange: false,
            subject_token: None,
            token_url: url.to_string(),
            client_id: "id".into(),
            client_secret: secret.into(),
            scope: Some("mcp".into()),
            resource: Some("https://up.test/mcp".into()),
            audience: None,
            auth_method: AuthMethod::ClientSecretBasic,
            refresh_before: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_serves_concurrent_requests_and_sources_are_shared() {
        let (url, ep) = endpoint().await;
        let c = Credentials::oauth(client(&url, "good"));
        let same = Credentials::oauth(client(&url, "good"));
        assert_eq!(c, same);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let c = if i % 2 == 0 { c.clone() } else { same.clone() };
                tokio::spawn(async move { c.bearer().await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "Bearer t1");
        }
        assert_eq!(ep.calls.load(Ordering::SeqCst), 1);
        let (_, body) = lock(&ep.last).clone().unwrap();
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=mcp&resource=https%3A%2F%2Fup.test%2Fmcp"
        );
        // A 401 drops the token once; a stale value does not drop the new one.
        c.invalidate(&HeaderValue::from_static("Bearer t1"));
        assert_eq!(c.bearer().await.unwrap(), "Bearer t2");
        c.invalidate(&HeaderValue::from_static("Bearer t1"));
        assert_eq!(c.bearer().await.unwrap(), "Bearer t2");
        assert_eq!(ep.calls.load(Ordering::SeqCst), 2);
        assert!(format!("{c:?}").contains("oauth client `id`"));
        assert!(!format!("{:?}", client(&url, "good")).contains("good"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_name_the_endpoint_and_are_shared_by_waiters() {
        let (url, ep) = endpoint().await;
        let wrong = Credentials::oauth(client(&url, "bad"));
        let e = wrong.bearer().await.unwrap_err();
        assert_eq!(
            e.0,
            format!(
                "token endpoint {url}: refused the client `id` with HTTP 400 Bad Request: invalid_client (bad secret)"
            )
        );
        ep.down.store(true, Ordering::SeqCst);
        let c = Credentials::oauth(client(&url, "good"));
        let before = ep.calls.load(Ordering::SeqCst);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.bearer().await })
            })
            .collect();
        for t in tasks {
            let e = t.await.unwrap().unwrap_err();
            assert!(e.0.contains("HTTP 503"), "{e}");
        }
        // Requests that waited for the failing fetch got its error instead of fetching again.
        assert!(ep.calls.load(Ordering::SeqCst) - before < 10);
        ep.down.store(false, Ordering::SeqCst);
        assert!(c.bearer().await.is_ok());
        let gone = Credentials::oauth(client("http://127.0.0.1:1/token", "good"));
        let e = gone.bearer().await.unwrap_err();
        assert!(
            e.0.starts_with("token endpoint http://127.0.0.1:1/token: cannot reach it"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tokens_are_refreshed_before_they_expire() {
        let (url, ep) = endpoint().await;
        ep.expires_in.store(2, Ordering::SeqCst);
        let c = Credentials::oauth(client(&url, "good"));
        assert_eq!(c.bearer().await.unwrap(), "Bearer t1");
        assert_eq!(c.bearer().await.unwrap(), "Bearer t1");
        // Refresh is due after half of the 2 s lifetime.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(c.bearer().await.unwrap(), "Bearer t2");
        assert_eq!(ep.calls.load(Ordering::SeqCst), 2);
    }
}
