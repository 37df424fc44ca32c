//! Request checks of the Streamable HTTP front: Origin, Accept, Content-Type, the
//! `MCP-Protocol-Version` header, and MCP headers sent more than once. Each failure carries its
//! exact HTTP status and a message that says what was wrong.

use crate::error::ProxyError;
use http::{HeaderMap, StatusCode, header};
use shadowcat_proto::era::{
    METHOD_HEADER, NAME_HEADER, PARAM_HEADER_PREFIX, PROTOCOL_VERSION_HEADER, ProtocolVersion,
    SESSION_ID_HEADER,
};
use shadowcat_proto::error::{HEADER_MISMATCH, INVALID_REQUEST};

/// Which browser origins may talk to the front. Loopback origins are always allowed.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    /// Extra allowed origins (`https://app.example.com`), or `*` for any.
    pub fn new(allowed: &[String]) -> Self {
        let any = allowed.iter().any(|a| a == "*");
        let allowed = allowed
            .iter()
            .map(|a| a.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        OriginPolicy { allowed, any }
    }

    /// 403 when an `Origin` header is present and not allowed (DNS-rebinding protection).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if self.any || is_loopback_origin(&origin) || self.allowed.contains(&origin) {
            return Ok(());
        }
        Err(ProxyError::bad(
            StatusCode::FORBIDDEN,
            INVALID_REQUEST,
            format!("origin `{origin}` is not allowed; allow it with --allow-origin"),
        ))
    }
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, _)) => return h == "::1",
            None => return false,
        }
    } else {
        rest.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.ends_with(".localhost") || is_127(host)
}

fn is_127(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    let (ty, _) = wanted.split_once('/').unwrap_or((wanted, ""));
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case(wanted)
                || media == "*/*"
                || media
                    .split_once('/')
                    .is_some_and(|(t, sub)| sub == "*" && t.eq_ignore_ascii_case(ty))
        })
    })
}

pub fn post_accept(headers: &HeaderMap) -> Result<(), ProxyError> {
    if accepts(headers, "application/json") && accepts(headers, "text/event-stream") {
        return Ok(());
    }
    Err(ProxyError::bad(
        StatusCode::NOT_ACCEPTABLE,
        INVALID_REQUEST,
        "POST must send `Accept: application/json, text/event-stream`",
    ))
}

/// GET: the client must accept SSE (406 otherwise).
pub fn get_accept(headers: &HeaderMap) -> Result<(), ProxyError> {
    if accepts(headers, "text/event-stream") {
        return Ok(());
    }
    Err(ProxyError::bad(
        StatusCode::NOT_ACCEPTABLE,
        INVALID_REQUEST,
        "GET must send `Accept: text/event-stream`",
    ))
}

/// POST bodies are JSON (415 otherwise).
pub fn content_type(headers: &HeaderMap) -> Result<(), ProxyError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    let shown = if ct.is_empty() { "none" } else { ct };
    Err(ProxyError::bad(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        INVALID_REQUEST,
        format!("Content-Type must be application/json (got {shown})"),
    ))
}

/// The MCP headers that must appear at most once: the proxy checks one value (against the body,
/// against its sessions) while every value would be forwarded, so a repeated header could show
/// the proxy one thing and the upstream another.
const SINGLE_HEADERS: [&str; 4] = [
    METHOD_HEADER,
    NAME_HEADER,
    PROTOCOL_VERSION_HEADER,
    SESSION_ID_HEADER,
];

/// `400` when `Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`, `Mcp-Session-Id` or any
/// `Mcp-Param-*` header is sent more than once (as separate fields; a comma in one value is that
/// value). Applied to every request of every route and method before anything else reads them.
/// The JSON-RPC code is the 2026-07-28 `HeaderMismatch` (`-32020`) for a request of that era,
/// otherwise `-32600`.
pub fn single_headers(headers: &HeaderMap) -> Result<(), ProxyError> {
    let repeated = |name: &str| headers.get_all(name).iter().nth(1).is_some();
    let found = SINGLE_HEADERS
        .iter()
        .copied()
        .find(|n| repeated(n))
        .or_else(|| {
            headers
                .keys()
                .map(|k| k.as_str())
                .find(|k| k.starts_with(PARAM_HEADER_PREFIX) && repeated(k))
        });
    let Some(name) = found else {
        return Ok(());
    };
    let modern = headers
        .get(PROTOCOL_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ProtocolVersion::parse(v.trim()))
        .is_some_and(|v| v.is_modern());
    Err(ProxyError::bad(
        StatusCode::BAD_REQUEST,
        if modern {
            HEADER_MISMATCH
        } else {
            INVALID_REQUEST
        },
        format!("the `{name}` header is sent more than once; send it once"),
    ))
}

/// The `MCP-Protocol-Version` header, if sent, must name a version we serve (400 otherwise).
pub fn protocol_version(headers: &HeaderMap) -> Result<Option<ProtocolVersion>, ProxyError> {
    let Some(v) = headers.get(PROTOCOL_VERSION_HEADER) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    match ProtocolVersion::parse(text) {
        Some(p) => Ok(Some(p)),
        None => Err(ProxyError::UnsupportedVersion {
            requested: text.to_string(),
            supported: ProtocolVersion::ALL.iter().map(|v| v.as_str()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn origins() {
        let p = OriginPolicy::new(&["https://app.example.com/".into()]);
        assert!(p.check(&h(&[])).is_ok());
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8080",
            "https://app.example.com",
        ] {
            let mut m = HeaderMap::new();
            m.insert(header::ORIGIN, HeaderValue::from_str(ok).unwrap());
            assert!(p.check(&m).is_ok(), "{ok}");
        }
        for bad in [
            "http://evil.com",
            "http://localhost.evil.com",
            "null",
            "http://127.0.0.1.evil.com",
        ] {
            let mut m = HeaderMap::new();
            m.insert(header::ORIGIN, HeaderValue::from_str(bad).unwrap());
            let e = p.check(&m).unwrap_err();
            assert_eq!(e.http_status(), StatusCode::FORBIDDEN, "{bad}");
        }
        assert!(
            OriginPolicy::new(&["*".into()])
                .check(&h(&[("origin", "http://evil.com")]))
                .is_ok()
        );
    }

    #[test]
    fn mcp_headers_must_not_repeat() {
        assert!(single_headers(&h(&[])).is_ok());
        // One of each, and repeatable headers repeated, are fine.
        assert!(
            single_headers(&h(&[
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-session-id", "abc"),
                ("mcp-param-a", "1"),
                ("mcp-param-b", "2"),
                ("accept", "application/json"),
                ("accept", "text/event-stream"),
            ]))
            .is_ok()
        );
        for name in [
            "mcp-method",
            "mcp-name",
            "mcp-protocol-version",
            "mcp-session-id",
            "mcp-param-region",
        ] {
            let e = single_headers(&h(&[(name, "2025-06-18"), (name, "2025-06-18")])).unwrap_err();
            assert_eq!(e.http_status(), StatusCode::BAD_REQUEST, "{name}");
            assert_eq!(e.jsonrpc_code(), INVALID_REQUEST, "{name}");
            assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
        }
        // Header names are case-insensitive: `Mcp-Name` and `mcp-name` are the same header.
        let mut m = HeaderMap::new();
        m.append("Mcp-Name", HeaderValue::from_static("echo"));
        m.append("mcp-name", HeaderValue::from_static("rm"));
        assert!(single_headers(&m).is_err());
        // In a 2026-07-28 request it is that era's HeaderMismatch.
        let e = single_headers(&h(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-name", "echo"),
            ("mcp-name", "rm"),
        ]))
        .unwrap_err();
        assert_eq!(e.jsonrpc_code(), HEADER_MISMATCH);
    }

    #[test]
    fn accept_and_content_type() {
        assert!(post_accept(&h(&[("accept", "application/json, text/event-stream")])).is_ok());
        assert!(
            post_accept(&h(&[
                ("accept", "application/json"),
                ("accept", "text/event-stream;q=0.9")
            ]))
            .is_ok()
        );
        assert!(post_accept(&h(&[("accept", "*/*")])).is_ok());
        assert_eq!(
            post_accept(&h(&[("accept", "application/json")]))
                .unwrap_err()
                .http_status(),
            406
        );
        assert_eq!(post_accept(&h(&[])).unwrap_err().http_status(), 406);
        assert!(get_accept(&h(&[("accept", "text/event-stream")])).is_ok());
        assert!(get_accept(&h(&[("accept", "application/json")])).is_err());
        assert!(content_type(&h(&[("content-type", "application/json; charset=utf-8")])).is_ok());
        assert_eq!(
            content_type(&h(&[("content-type", "text/plain")]))
                .unwrap_err()
                .http_status(),
            415
        );
        assert_eq!(content_type(&h(&[])).unwrap_err().http_status(), 415);
    }

    #[test]
    fn versions() {
        assert_eq!(protocol_version(&h(&[])).unwrap(), None);
        assert_eq!(
            protocol_version(&h(&[("mcp-protocol-version", "2025-06-18")])).unwrap(),
            Some(ProtocolVersion::V2025_06_18)
        );
        let e = protocol_version(&h(&[("mcp-protocol-version", "1999-01-01")])).unwrap_err();
        assert_eq!(
            (e.http_status(), e.jsonrpc_code()),
            (StatusCode::BAD_REQUEST, -32022)
        );
        assert!(e.to_string().contains("1999-01-01"));
        let data = e.data().unwrap();
        assert_eq!(data["requested"], "1999-01-01");
        assert!(
            data["supported"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "2026-07-28")
        );
    }
}
