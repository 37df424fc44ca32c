//! Request checks of the Streamable HTTP front: Origin, Accept, Content-Type, the
//! `MCP-Protocol-Version` header, and MCP headers sent more than once. Each failure carries its
//! exact HTTP status and a message that says what was wrong.

use crate::error::ProxyError;
use http::{HeaderMap, header};
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
            crate::error::Refusal::Forbidden,
            INVALID_REQUEST,
            format!("origin `{origin}` is not allowed; allow it with --allow-origin"),
        ))
    }
}

/// Which `Host` names the front serves (DNS-rebinding protection for requests without
/// `Origin`, e.g. a page's `GET /sse`): on a loopback listener, or whenever names are
/// configured, only loopback names (`localhost`, `*.localhost`, `127.x.y.z`, `[::1]`, any port)
/// and the configured ones (`public_url`'s host, `--allow-host` / `server.allowed_hosts`). A
/// listener on another address with no names configured serves whatever names point at it.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// Configured names, lower case, without ports.
    allowed: Vec<String>,
}

impl HostPolicy {
    /// The policy for `allowed` names (each checked with [`HostPolicy::parse_name`]) and a
    /// public base URL (its host is allowed too).
    pub fn new(allowed: &[String], public_url: Option<&str>) -> Result<HostPolicy, String> {
        let mut names = Vec::new();
        for a in allowed {
            names.push(Self::parse_name(a)?);
        }
        if let Some(u) = public_url {
            let host = reqwest::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .ok_or_else(|| format!("`{u}` is not a URL with a host"))?;
            names.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
        }
        Ok(HostPolicy { allowed: names })
    }

    /// Whether names were configured (then the check applies on any listener).
    pub fn has_names(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// One configured name: a host name or an address, without a port (any port is served).
    pub fn parse_name(s: &str) -> Result<String, String> {
        let t = s.trim();
        let bad = || format!("`{s}` is not a host name (give a name or an address, no port)");
        if t.is_empty() || t.contains(['/', '@', '*']) {
            return Err(bad());
        }
        let a: http::uri::Authority = t.parse().map_err(|_| bad())?;
        if a.port().is_some() {
            return Err(format!(
                "`{s}` has a port: give the host name alone (any port is served)"
            ));
        }
        Ok(a.host().trim_matches(['[', ']']).to_ascii_lowercase())
    }

    /// 403 unless the request's `Host` is a loopback name or a configured one. Absolute-form
    /// requests (`--allow-absolute-uri`) are not checked: their `Host` names the destination,
    /// and a browser only sends them to a proxy it was configured to use.
    pub fn check(&self, uri: &http::Uri, headers: &HeaderMap) -> Result<(), ProxyError> {
        if uri.scheme().is_some() {
            return Ok(());
        }
        let refuse = |msg: String| {
            Err(ProxyError::bad(
                crate::error::Refusal::Forbidden,
                INVALID_REQUEST,
                msg,
            ))
        };
        let Some(raw) = headers.get(header::HOST) else {
            return refuse("a Host header is required".into());
        };
        let text = raw.to_str().unwrap_or("").trim();
        let Ok(a) = text.parse::<http::uri::Authority>() else {
            return refuse("the Host header is not a host name".into());
        };
        let host = a.host().trim_matches(['[', ']']).to_ascii_lowercase();
        if is_loopback_name(&host) || self.allowed.contains(&host) {
            return Ok(());
        }
        let shown: String = host.chars().take(100).collect();
        refuse(format!(
            "host `{shown}` is not served here (DNS-rebinding protection); reach the proxy as \
             localhost, or allow the name with --allow-host (gateway: server.allowed_hosts)"
        ))
    }
}

/// `localhost`, `*.localhost`, `127.x.y.z` or `::1` (no brackets, no port).
fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
        crate::error::Refusal::NotAcceptable,
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
        crate::error::Refusal::NotAcceptable,
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
        crate::error::Refusal::UnsupportedMediaType,
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
        crate::error::Refusal::Malformed,
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
    use http::StatusCode;

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
    fn host_names() {
        let p = HostPolicy::new(
            &[
                "MCP.example.com".into(),
                "10.0.0.5".into(),
                "[2001:db8::5]".into(),
            ],
            Some("https://public.example.org:8443/base"),
        )
        .unwrap();
        assert!(p.has_names());
        let uri: http::Uri = "/mcp".parse().unwrap();
        let host = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(v).unwrap());
            m
        };
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "app.localhost:3000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "mcp.example.com",
            "mcp.example.com:443",
            "10.0.0.5:8080",
            "[2001:db8::5]:80",
            "public.example.org",
        ] {
            assert!(p.check(&uri, &host(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.6",
            "0.0.0.0:8080",
            "",
        ] {
            let e = p.check(&uri, &host(bad)).unwrap_err();
            assert_eq!(e.http_status(), StatusCode::FORBIDDEN, "{bad}");
            assert_eq!(e.jsonrpc_code(), INVALID_REQUEST, "{bad}");
        }
        assert_eq!(
            p.check(&uri, &HeaderMap::new()).unwrap_err().http_status(),
            StatusCode::FORBIDDEN
        );
        // Absolute-form: the Host is the destination's.
        let abs: http::Uri = "http://upstream.example/mcp".parse().unwrap();
        assert!(p.check(&abs, &host("upstream.example")).is_ok());
        // Only loopback names without configuration.
        let none = HostPolicy::new(&[], None).unwrap();
        assert!(!none.has_names());
        assert!(none.check(&uri, &host("localhost:9")).is_ok());
        assert!(none.check(&uri, &host("mcp.example.com")).is_err());
        for bad in [
            "",
            "a.example:80",
            "*.example",
            "http://a.example",
            "u@a.example",
        ] {
            assert!(HostPolicy::parse_name(bad).is_err(), "{bad}");
        }
        assert!(HostPolicy::new(&[], Some("not a url")).is_err());
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
