//! Typed errors of the relay engine. Each says which side failed and whether a retry is safe;
//! [`ProxyError::http_status`], [`ProxyError::jsonrpc_code`] and [`ProxyError::headers`]
//! (`Retry-After`, `WWW-Authenticate`, `RateLimit-*`) are the one table that maps them onto the
//! wire.

use http::{HeaderName, HeaderValue, StatusCode, header};
use shadowcat_proto::FrameError;
use shadowcat_proto::error as rpc;

/// Which party an error is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong.
    Client,
    /// The upstream server failed or is unreachable.
    Upstream,
    /// The proxy itself.
    Internal,
}

/// Why a client's request is refused: each kind has one HTTP status, here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed or breaks the protocol (400).
    Malformed,
    /// The request may not be made from where it comes (`Origin`, `Host`, destination) (403).
    Forbidden,
    /// Nothing is served at that path, or the named thing is unknown (404).
    NotFound,
    /// The client does not accept what the endpoint answers with (406).
    NotAcceptable,
    /// The client did not send its request in time (408).
    TooSlow,
    /// The body is not of a type the endpoint reads (415).
    UnsupportedMediaType,
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Malformed => StatusCode::BAD_REQUEST,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Refusal::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Refusal::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// The HTTP status of a JSON-RPC answer in the 2026-07-28 era, which maps some error codes
/// onto HTTP (a result, or any other error, is `200`).
pub fn stateless_answer_status(error_code: Option<i64>) -> StatusCode {
    match error_code {
        Some(rpc::METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        Some(
            rpc::PARSE_ERROR
            | rpc::INVALID_REQUEST
            | rpc::INVALID_PARAMS
            | rpc::HEADER_MISMATCH
            | rpc::MISSING_CAPABILITY
            | rpc::UNSUPPORTED_VERSION,
        ) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's message is not valid JSON-RPC.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client's request is refused for what it is (see [`Refusal`]).
    #[error("{message}")]
    BadRequest {
        /// What kind of refusal (it decides the HTTP status).
        why: Refusal,
        /// JSON-RPC code for the body.
        code: i64,
        /// What was wrong and what to do.
        message: String,
    },
    /// The client asked for a protocol version not served here (`supported` lists what is).
    #[error("unsupported protocol version `{requested}`; supported: {}", supported.join(", "))]
    UnsupportedVersion {
        /// What the client asked for.
        requested: String,
        /// What this route serves.
        supported: Vec<&'static str>,
    },
    /// Unknown, expired or deleted session id.
    #[error(
        "session not found: it is unknown, expired or was deleted; re-initialize without a session id"
    )]
    SessionNotFound,
    /// The client sent a request whose id is already used by one of its requests still in
    /// flight in the same session (the answers could not be told apart).
    #[error("request id {0} is already in flight in this session; use a new id")]
    DuplicateRequestId(shadowcat_proto::RequestId),
    /// Another replica of the proxy took the session over at the same moment as this one
    /// (its claim to the session won) and the request could not be passed on to it: sent
    /// again, it reaches the session where it now runs.
    #[error("another replica of the proxy is taking this session over; retry the request")]
    SessionMoving,
    /// Too many sessions.
    #[error("the proxy is at its session limit ({0}); retry later")]
    SessionLimit(usize),
    /// The request's principal already holds as many sessions as one principal may.
    #[error(
        "this principal is at its session limit ({0}); end one of its sessions (DELETE) or retry later"
    )]
    PrincipalSessionLimit(usize),
    /// Could not start or reach the upstream.
    #[error("upstream unavailable: {0}")]
    UpstreamConnect(String),
    /// The upstream closed (child exited, connection lost) before answering.
    #[error("upstream closed: {0}")]
    UpstreamClosed(String),
    /// The upstream did not answer a request within its route's request timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// The upstream answered with something the proxy cannot relay.
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    /// The client cancelled the request (`notifications/cancelled`) while it was being sent.
    /// MCP answers nothing to a cancelled request: this only releases what waited for it.
    #[error("the request was cancelled by the client (notifications/cancelled)")]
    Cancelled,
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// The session store is unreachable and the proxy is configured to fail closed.
    #[error("the session store is unavailable ({0}); retry later")]
    StoreUnavailable(String),
    /// The proxy could not start a part of itself (threads, runtimes).
    #[error("the proxy could not start: {0}")]
    Startup(String),
    /// Every upstream that could take the request has its circuit breaker open.
    #[error("{message}")]
    CircuitOpen {
        /// Which upstream and when to retry.
        message: String,
        /// Seconds until the breaker lets a probe through.
        retry_after: u64,
    },
    /// The endpoint does not take this HTTP method (`405` with `Allow`).
    #[error("{message}")]
    MethodNotAllowed {
        /// The methods it takes (the `Allow` header).
        allow: &'static str,
        /// What to do instead.
        message: String,
    },
    /// The request's credentials were refused: `401` (missing, invalid, expired) or `403`
    /// (a scope is missing), with `challenge` as its `WWW-Authenticate` header.
    #[error("{message}")]
    Unauthorized {
        /// What was wrong (never the credentials themselves).
        message: String,
        /// The `WWW-Authenticate` value (RFC 6750 / RFC 9728).
        challenge: String,
        /// The credentials are valid but lack a scope (`403`).
        insufficient_scope: bool,
    },
    /// A rate limit refused the request (`429` with `Retry-After` and `RateLimit-*`), or the
    /// shared limiter could not decide and refuses (`503` with `Retry-After`).
    #[error("{message}")]
    RateLimited {
        /// Which limit, and when to retry.
        message: String,
        /// Seconds until a request would be allowed.
        retry_after: u64,
        /// The limit's burst size (`RateLimit-Limit`).
        limit: u32,
        /// The limiter is unavailable (not over the limit).
        unavailable: bool,
    },
}

impl ProxyError {
    /// A refused client request: its kind, JSON-RPC code and what was wrong.
    pub fn bad(why: Refusal, code: i64, message: impl Into<String>) -> Self {
        ProxyError::BadRequest {
            why,
            code,
            message: message.into(),
        }
    }

    /// The same error with `what` said first (errors of the upstream, which carry a message).
    pub fn context(self, what: &str) -> ProxyError {
        match self {
            ProxyError::UpstreamConnect(m) => ProxyError::UpstreamConnect(format!("{what}: {m}")),
            ProxyError::UpstreamClosed(m) => ProxyError::UpstreamClosed(format!("{what}: {m}")),
            ProxyError::UpstreamProtocol(m) => ProxyError::UpstreamProtocol(format!("{what}: {m}")),
            other => other,
        }
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::Frame(_)
            | ProxyError::BadRequest { .. }
            | ProxyError::SessionNotFound
            | ProxyError::DuplicateRequestId(_)
            | ProxyError::UnsupportedVersion { .. }
            | ProxyError::Unauthorized { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::Cancelled => Side::Client,
            ProxyError::RateLimited {
                unavailable: false, ..
            } => Side::Client,
            ProxyError::RateLimited {
                unavailable: true, ..
            } => Side::Internal,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamClosed(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::RequestTimeout(_)
            | ProxyError::CircuitOpen { .. } => Side::Upstream,
            ProxyError::PrincipalSessionLimit(_) => Side::Client,
            ProxyError::SessionLimit(_)
            | ProxyError::SessionMoving
            | ProxyError::ShuttingDown
            | ProxyError::StoreUnavailable(_)
            | ProxyError::Startup(_) => Side::Internal,
        }
    }

    /// Whether the same request may safely be sent again (nothing reached the upstream).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect(_)
                | ProxyError::CircuitOpen { .. }
                | ProxyError::SessionLimit(_)
                | ProxyError::PrincipalSessionLimit(_)
                | ProxyError::SessionMoving
                | ProxyError::ShuttingDown
                | ProxyError::StoreUnavailable(_)
        )
    }

    /// The upstream could not answer (unreachable, gone, too slow), as opposed to answering
    /// with something wrong: another upstream of the route might do better.
    pub fn upstream_failed(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect(_)
                | ProxyError::UpstreamClosed(_)
                | ProxyError::RequestTimeout(_)
        )
    }

    /// HTTP status for this error when it ends an HTTP request.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::Frame(FrameError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Frame(_) => StatusCode::BAD_REQUEST,
            ProxyError::BadRequest { why, .. } => why.status(),
            ProxyError::UnsupportedVersion { .. } => StatusCode::BAD_REQUEST,
            ProxyError::SessionNotFound => StatusCode::NOT_FOUND,
            ProxyError::DuplicateRequestId(_) | ProxyError::Cancelled => StatusCode::BAD_REQUEST,
            ProxyError::SessionLimit(_)
            | ProxyError::PrincipalSessionLimit(_)
            | ProxyError::SessionMoving
            | ProxyError::ShuttingDown
            | ProxyError::StoreUnavailable(_)
            | ProxyError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamClosed(_)
            | ProxyError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            ProxyError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Startup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Unauthorized {
                insufficient_scope: true,
                ..
            } => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RateLimited {
                unavailable: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The HTTP headers that go with this error: `Retry-After` where waiting helps,
    /// `WWW-Authenticate` on a refused credential, `RateLimit-*` over a rate limit.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let retry = |secs: u64| (header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        match self {
            ProxyError::SessionLimit(_)
            | ProxyError::PrincipalSessionLimit(_)
            | ProxyError::ShuttingDown
            | ProxyError::StoreUnavailable(_) => vec![retry(5)],
            ProxyError::SessionMoving => vec![retry(1)],
            ProxyError::CircuitOpen { retry_after, .. } => vec![retry(*retry_after)],
            ProxyError::RateLimited {
                retry_after,
                unavailable: true,
                ..
            } => vec![retry(*retry_after)],
            ProxyError::RateLimited {
                retry_after, limit, ..
            } => vec![
                retry(*retry_after),
                (
                    HeaderName::from_static("ratelimit-reset"),
                    HeaderValue::from((*retry_after).max(1)),
                ),
                (
                    HeaderName::from_static("ratelimit-limit"),
                    HeaderValue::from(*limit),
                ),
                (
                    HeaderName::from_static("ratelimit-remaining"),
                    HeaderValue::from_static("0"),
                ),
            ],
            ProxyError::MethodNotAllowed { allow, .. } => {
                vec![(header::ALLOW, HeaderValue::from_static(allow))]
            }
            // A challenge that is not a valid header value is left out rather than sent broken.
            ProxyError::Unauthorized { challenge, .. } => HeaderValue::try_from(challenge.as_str())
                .map(|v| vec![(header::WWW_AUTHENTICATE, v)])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The id of the client request this error answers, where the error knows it (a request
    /// refused for its params); otherwise the caller's id, or `null`.
    pub fn request_id(&self) -> Option<&shadowcat_proto::RequestId> {
        match self {
            ProxyError::Frame(e) => e.id(),
            ProxyError::DuplicateRequestId(id) => Some(id),
            _ => None,
        }
    }

    /// The JSON-RPC error `data`, where the error defines one.
    pub fn data(&self) -> Option<serde_json::Value> {
        match self {
            ProxyError::UnsupportedVersion {
                requested,
                supported,
            } => Some(serde_json::json!({
                "supported": supported,
                "requested": requested,
            })),
            _ => None,
        }
    }

    /// JSON-RPC error code for this error.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            ProxyError::Frame(e) => e.code(),
            ProxyError::BadRequest { code, .. } => *code,
            ProxyError::UnsupportedVersion { .. } => rpc::UNSUPPORTED_VERSION,
            ProxyError::SessionNotFound
            | ProxyError::DuplicateRequestId(_)
            | ProxyError::Cancelled => rpc::INVALID_REQUEST,
            ProxyError::SessionLimit(_)
            | ProxyError::PrincipalSessionLimit(_)
            | ProxyError::SessionMoving
            | ProxyError::ShuttingDown
            | ProxyError::StoreUnavailable(_)
            | ProxyError::Startup(_) => rpc::INTERNAL_ERROR,
            ProxyError::Unauthorized { .. } | ProxyError::MethodNotAllowed { .. } => {
                rpc::INVALID_REQUEST
            }
            ProxyError::RateLimited { .. } => rpc::RATE_LIMITED,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamClosed(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::CircuitOpen { .. } => rpc::UPSTREAM_ERROR,
            ProxyError::RequestTimeout(_) => rpc::REQUEST_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_mapped_in_the_table_too() {
        let names = |e: &ProxyError| {
            e.headers()
                .into_iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        let e = ProxyError::Unauthorized {
            message: "invalid token: expired".into(),
            challenge: "Bearer error=\"invalid_token\"".into(),
            insufficient_scope: false,
        };
        assert_eq!(e.http_status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.jsonrpc_code(), rpc::INVALID_REQUEST);
        assert_eq!(
            names(&e),
            ["www-authenticate: Bearer error=\"invalid_token\""]
        );
        let e = ProxyError::Unauthorized {
            message: "insufficient scope".into(),
            challenge: "Bearer error=\"insufficient_scope\"\n".into(),
            insufficient_scope: true,
        };
        assert_eq!(e.http_status(), StatusCode::FORBIDDEN);
        assert!(names(&e).is_empty(), "a broken challenge is not sent");
        let e = ProxyError::RateLimited {
            message: "rate limit exceeded".into(),
            retry_after: 0,
            limit: 10,
            unavailable: false,
        };
        assert_eq!(
            (e.http_status(), e.jsonrpc_code(), e.side()),
            (
                StatusCode::TOO_MANY_REQUESTS,
                rpc::RATE_LIMITED,
                Side::Client
            )
        );
        assert_eq!(
            names(&e),
            [
                "retry-after: 1",
                "ratelimit-reset: 1",
                "ratelimit-limit: 10",
                "ratelimit-remaining: 0"
            ]
        );
        let e = ProxyError::RateLimited {
            message: "the shared rate limiter is unavailable".into(),
            retry_after: 3,
            limit: 10,
            unavailable: true,
        };
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(names(&e), ["retry-after: 3"]);
        assert_eq!(names(&ProxyError::SessionLimit(3)), ["retry-after: 5"]);
        assert!(names(&ProxyError::SessionNotFound).is_empty());
        let e = ProxyError::MethodNotAllowed {
            allow: "GET, POST",
            message: "use GET or POST".into(),
        };
        assert_eq!(e.http_status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(names(&e), ["allow: GET, POST"]);
    }

    #[test]
    fn table_maps_sides_statuses_and_codes() {
        let e = ProxyError::SessionNotFound;
        assert_eq!(
            (e.side(), e.http_status(), e.jsonrpc_code()),
            (Side::Client, StatusCode::NOT_FOUND, -32600)
        );
        let e = ProxyError::DuplicateRequestId(shadowcat_proto::RequestId::Number(4));
        assert_eq!(
            (e.side(), e.http_status(), e.jsonrpc_code()),
            (Side::Client, StatusCode::BAD_REQUEST, -32600)
        );
        assert!(
            e.to_string()
                .contains("request id 4 is already in flight in this session")
        );
        let e = ProxyError::UpstreamConnect("x".into());
        assert_eq!(e.http_status(), StatusCode::BAD_GATEWAY);
        assert!(e.retryable());
        assert!(!ProxyError::UpstreamClosed("x".into()).retryable());
        let e = ProxyError::UpstreamClosed("the stream broke".into()).context("resuming");
        assert_eq!(e.to_string(), "upstream closed: resuming: the stream broke");
        assert_eq!(e.side(), Side::Upstream);
        let e = ProxyError::SessionMoving;
        assert_eq!(
            (e.side(), e.http_status(), e.jsonrpc_code(), e.retryable()),
            (
                Side::Internal,
                StatusCode::SERVICE_UNAVAILABLE,
                -32603,
                true
            )
        );
        assert_eq!(
            e.headers(),
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))]
        );
        let e = ProxyError::Frame(FrameError::TooLarge { size: 2, limit: 1 });
        assert_eq!(e.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = ProxyError::Frame(FrameError::Parse("x".into()));
        assert_eq!(
            (e.http_status(), e.jsonrpc_code()),
            (StatusCode::BAD_REQUEST, -32700)
        );
    }
}
