//! Loading and validating the gateway's configuration file: the first syntax or type error
//! with its line, column and field path; then *every* semantic problem, each naming the file,
//! the field and what is wrong.

use super::config::{
    AdminConfig, AuthConfig, Cidr, ConfigError, GatewayConfig, JWT_ALGORITHMS, LimitsBackend,
    OAuthConfig, Problem, RateConfig, RouteConfig, Strategy, UpstreamConfig, is_redis_url,
    route_key,
};
use shadowcat_proxy::upstream::composite::names::{
    MAX_NAME_LEN, valid_separator, valid_server_name,
};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// Most problems `parse` reports before it gives up on a file.
const MAX_PARSE_PROBLEMS: usize = 32;

/// One reading of the text: the config, or (field, span, message) of the first problem.
type Parsed = Result<GatewayConfig, (String, Option<std::ops::Range<usize>>, String)>;

fn parse_once(text: &str) -> Parsed {
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| (String::new(), e.span(), e.message().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        (path, inner.span(), inner.message().to_string())
    })
}

/// Blank out (with spaces, newlines kept) the lines `span` touches, so the text reads without
/// them. `false` when that cannot help: a table header (its keys would move to another table)
/// or nothing to blank.
fn blank_lines(text: &mut String, span: std::ops::Range<usize>) -> bool {
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end = text[span.end.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| span.end.min(text.len()) + i);
    let lines = &text[start..end];
    if lines.trim().is_empty() || lines.trim_start().starts_with('[') {
        return false;
    }
    let blank: String = lines
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &blank);
    true
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or variant), with the closest
/// expected name when one is close enough to be a typo.
fn did_you_mean(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_string();
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|c| (strsim::levenshtein(given, c), c))
        .min();
    match best {
        Some((d, c)) if d > 0 && d <= (given.chars().count() / 3).max(2) => {
            format!("{message}; did you mean `{c}`?")
        }
        _ => message.to_string(),
    }
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

impl GatewayConfig {
    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(&file, "", format!("cannot read the file: {e}")))?;
        let cfg = GatewayConfig::parse(&file, &text)?;
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// Parse TOML text (no validation). `file` names it in errors.
    ///
    /// Every problem is reported, not only the first: a value that does not fit (or a key that
    /// is unknown) is reported, its line is blanked out (line numbers stay as they were) and the
    /// text is read again, up to [`MAX_PARSE_PROBLEMS`] times; then the rest of the file is
    /// validated too. A misspelt key or value gets a "did you mean" when one is close.
    pub fn parse(file: &str, text: &str) -> Result<GatewayConfig, ConfigError> {
        let mut problems: Vec<Problem> = Vec::new();
        let mut text = text.to_string();
        loop {
            let (field, span, message) = match parse_once(&text) {
                Ok(cfg) if problems.is_empty() => return Ok(cfg),
                Ok(cfg) => {
                    // What the rest of the file says is wrong too.
                    if let Err(more) = cfg.validate(file) {
                        problems.extend(more.problems);
                    }
                    break;
                }
                Err(e) => e,
            };
            let position = span.as_ref().map(|s| position(&text, s.start));
            let again = problems
                .iter()
                .any(|p| p.field == field && p.message == message);
            if !again {
                problems.push(Problem {
                    field,
                    position,
                    message: did_you_mean(&message),
                });
            }
            // Go on only where the rest of the file still reads as written.
            match span {
                Some(span) if !again && problems.len() < MAX_PARSE_PROBLEMS => {
                    if !blank_lines(&mut text, span) {
                        break;
                    }
                }
                _ => break,
            }
        }
        // In the order of the file (problems found by validation, without a line, after).
        problems.sort_by_key(|p| p.position.unwrap_or((usize::MAX, 0)));
        Err(ConfigError {
            file: file.to_string(),
            problems,
        })
    }

    /// Check everything that types cannot: every problem is reported, each with its field.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut bad = |field: String, message: String| {
            p.push(Problem {
                field,
                position: None,
                message,
            })
        };
        if let Some(a) = &self.audit {
            for (field, message) in a.problems() {
                bad(field.into(), message);
            }
        }
        let s = &self.server;
        if let Some(u) = &s.public_url
            && let Err(e) = check_url(u)
        {
            bad("server.public_url".into(), e);
        }
        if s.max_sessions == 0 {
            bad("server.max_sessions".into(), "must be at least 1".into());
        }
        if s.max_sessions_per_principal == Some(0) {
            bad(
                "server.max_sessions_per_principal".into(),
                "must be at least 1 (leave it out for no per-principal limit)".into(),
            );
        }
        if let Some(w) = s.workers
            && !(1..=1024).contains(&w)
        {
            bad(
                "server.workers".into(),
                format!("{w} is not between 1 and 1024"),
            );
        }
        if s.max_message < 1024 {
            bad(
                "server.max_message".into(),
                "must be at least 1024 bytes".into(),
            );
        }
        if s.max_events == 0 {
            bad("server.max_events".into(), "must be at least 1".into());
        }
        if s.max_event_bytes < 1024 {
            bad(
                "server.max_event_bytes".into(),
                "must be at least 1024 bytes".into(),
            );
        }
        if s.event_max_age.0.is_zero() {
            bad("server.event_max_age".into(), "must be more than 0".into());
        }
        if let Err(e) = shadowcat_store::check_spec(&s.store) {
            bad("server.store".into(), e.to_string());
        }
        if let Err(e) = shadowcat_store::check_redis_prefix(&s.redis_prefix) {
            bad("server.redis_prefix".into(), e);
        }
        if !matches!(s.on_store_outage.as_str(), "closed" | "memory") {
            bad(
                "server.on_store_outage".into(),
                format!("`{}` is not `closed` or `memory`", s.on_store_outage),
            );
        }
        if s.idle_timeout.0.is_zero() {
            bad("server.idle_timeout".into(), "must be more than 0".into());
        }
        for (field, d) in [
            ("server.header_timeout", s.header_timeout),
            ("server.body_timeout", s.body_timeout),
            ("server.keep_alive_timeout", s.keep_alive_timeout),
        ] {
            if d.0.is_zero() {
                bad(field.into(), "must be more than 0".into());
            }
        }
        if s.max_connections == 0 {
            bad("server.max_connections".into(), "must be at least 1".into());
        }
        if s.drain_grace.0 > Duration::from_secs(3600) {
            bad(
                "server.drain_grace".into(),
                "must be at most 1h (sessions of a removed upstream end after it)".into(),
            );
        }
        for (i, h) in s.allowed_hosts.iter().enumerate() {
            if let Err(e) = shadowcat_proxy::front::http::HostPolicy::parse_name(h) {
                bad(format!("server.allowed_hosts[{i}]"), e);
            }
        }
        for (i, t) in s.trusted_proxies.iter().enumerate() {
            if let Err(e) = Cidr::parse(t) {
                bad(format!("server.trusted_proxies[{i}]"), e);
            }
        }
        if let Some(a) = &self.auth {
            validate_auth(a, &mut bad);
            if s.public_url.is_none() {
                bad(
                    "server.public_url".into(),
                    "is required with [auth]: the RFC 9728 metadata and the `WWW-Authenticate` \
                     challenges name this gateway by it (e.g. https://mcp.example.com); it is \
                     never guessed from the request's `Host`"
                        .into(),
                );
            }
        }
        if let Some(a) = &self.admin {
            validate_admin(a, s.listen, &mut bad);
        }
        if let Err(e) = self.metrics.resolve_token() {
            bad("metrics.token_env".into(), e);
        }
        let l = &self.limits;
        for (name, r) in [
            ("global", &l.global),
            ("per_principal", &l.per_principal),
            ("per_ip", &l.per_ip),
        ] {
            if let Some(r) = r {
                validate_rate(&format!("limits.{name}"), r, &mut bad);
            }
        }
        for (tool, r) in &l.per_tool {
            validate_rate(&format!("limits.per_tool.{tool}"), r, &mut bad);
        }
        validate_limits_backend(self, &mut bad);
        if l.per_principal.is_some() && self.auth.is_none() {
            bad(
                "limits.per_principal".into(),
                "needs [auth]: without authentication there are no principals".into(),
            );
        }
        if self.routes.is_empty() {
            bad(
                "routes".into(),
                "no routes: add a [[routes]] with path = \"/mcp\" and its [[routes.upstreams]]"
                    .into(),
            );
        }
        let mut paths = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if route_key(&r.path).is_none() {
                bad(
                    format!("{at}.path"),
                    format!(
                        "`{}` must be `/mcp` or `/servers/NAME/mcp` (NAME: letters, digits, `-`, `_`)",
                        r.path
                    ),
                );
            } else if !paths.insert(r.path.as_str()) {
                bad(
                    format!("{at}.path"),
                    format!("`{}` is used by another route", r.path),
                );
            }
            if r.upstreams.is_empty() && r.servers.is_empty() {
                bad(
                    format!("{at}.upstreams"),
                    "no upstreams: add [[routes.upstreams]] with `url` or `command` (or \
                     [[routes.servers]] for a composite route)"
                        .into(),
                );
            } else if !r.upstreams.is_empty() && r.servers.is_empty() {
                validate_set_only(&at, r, &mut bad);
            }
            if !r.servers.is_empty() {
                validate_composite(&at, r, &mut bad);
            }
            super::resilience::validate(&at, &r.resilience(), &mut bad);
            if !r.scopes.is_empty() && self.auth.is_none() {
                bad(
                    format!("{at}.scopes"),
                    "scopes need [auth]: without authentication no token carries scopes".into(),
                );
            }
            for (j, rule) in r.rules.iter().enumerate() {
                let who = !rule.principals.is_empty()
                    || !rule.scopes.is_empty()
                    || !rule.claims.is_empty();
                if who && self.auth.is_none() {
                    bad(
                        format!("{at}.rules[{j}]"),
                        "`principals`, `scopes` and `claims` need [auth]: without authentication there is no principal"
                            .into(),
                    );
                }
            }
            let mut seen = HashSet::new();
            for (j, u) in r.upstreams.iter().enumerate() {
                let at = format!("{at}.upstreams[{j}]");
                validate_upstream(&at, u, &mut seen, &mut bad);
            }
            // Token exchange trades the client's JWT: there must be one.
            let jwt = self.auth.as_ref().is_some_and(|a| a.jwt.is_some());
            let exchanging = r
                .upstreams
                .iter()
                .map(|u| (format!("{at}.upstreams"), u))
                .chain(r.servers.iter().enumerate().flat_map(|(j, m)| {
                    let at = &at;
                    let own = (!m.has_set()).then(|| (format!("{at}.servers[{j}]"), &m.upstream));
                    let set = m
                        .upstreams
                        .iter()
                        .enumerate()
                        .map(move |(k, u)| (format!("{at}.servers[{j}].upstreams[{k}]"), u));
                    own.into_iter().chain(set)
                }))
                .filter(|(_, u)| {
                    u.oauth
                        .as_ref()
                        .is_some_and(|o| o.grant == crate::config::OAuthGrant::TokenExchange)
                });
            for (at, _) in exchanging {
                if !jwt {
                    bad(
                        format!("{at}.oauth.grant"),
                        "`token_exchange` exchanges each client's JWT for an upstream token: configure [auth.jwt]".into(),
                    );
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: file.to_string(),
                problems: p,
            })
        }
    }
}

fn check_url(u: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{u}` must be an http:// or https:// URL"));
    }
    Ok(())
}

fn validate_auth(a: &AuthConfig, bad: &mut impl FnMut(String, String)) {
    if a.jwt.is_none() && a.api_keys.is_empty() {
        bad(
            "auth".into(),
            "configure [auth.jwt] and/or [[auth.api_keys]] (or remove [auth] to turn authentication off)"
                .into(),
        );
    }
    for (i, s) in a.authorization_servers.iter().enumerate() {
        if let Err(e) = check_url(s) {
            bad(format!("auth.authorization_servers[{i}]"), e);
        }
    }
    if let Some(j) = &a.jwt {
        if j.issuer.trim().is_empty() {
            bad("auth.jwt.issuer".into(), "must not be empty".into());
        }
        if j.audience.is_empty() || j.audience.iter().any(|a| a.trim().is_empty()) {
            bad(
                "auth.jwt.audience".into(),
                "list the audience values this gateway accepts (its resource URL); none may be empty"
                    .into(),
            );
        }
        if let Err(e) = check_tls_url(&j.jwks_url, "the keys that sign tokens come from it") {
            bad("auth.jwt.jwks_url".into(), e);
        }
        if j.algorithms.is_empty() {
            bad(
                "auth.jwt.algorithms".into(),
                "list at least one algorithm".into(),
            );
        }
        for (i, alg) in j.algorithms.iter().enumerate() {
            if !JWT_ALGORITHMS.contains(&alg.as_str()) {
                bad(
                    format!("auth.jwt.algorithms[{i}]"),
                    format!(
                        "`{alg}` is not supported; use one of {}",
                        JWT_ALGORITHMS.join(", ")
                    ),
                );
            }
        }
        if j.principal_claim.trim().is_empty() {
            bad(
                "auth.jwt.principal_claim".into(),
                "must not be empty".into(),
            );
        }
    }
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, k) in a.api_keys.iter().enumerate() {
        let at = format!("auth.api_keys[{i}]");
        if k.name.trim().is_empty() {
            bad(format!("{at}.name"), "must not be empty".into());
        } else if !names.insert(k.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("`{}` is used by another key", k.name),
            );
        }
        let hex = k.sha256.trim().to_ascii_lowercase();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            bad(
                format!("{at}.sha256"),
                "must be 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`), never the key itself"
                    .into(),
            );
        } else if !hashes.insert(hex) {
            bad(
                format!("{at}.sha256"),
                "the same key is listed twice".into(),
            );
        }
    }
}

fn validate_admin(
    a: &AdminConfig,
    server: std::net::SocketAddr,
    bad: &mut impl FnMut(String, String),
) {
    let token = match a.resolve_token() {
        Ok(t) => t,
        Err(e) => {
            let field = if a.token.is_some() && a.token_env.is_none() {
                "admin.token"
            } else if a.token.is_none() {
                "admin.token_env"
            } else {
                "admin"
            };
            bad(field.into(), e);
            return;
        }
    };
    if !a.enabled {
        return;
    }
    if !a.listen.ip().is_loopback() && token.is_none() {
        bad(
            "admin.listen".into(),
            format!(
                "`{}` is not a loopback address: set `token_env` (or `token`, or --admin-token) so \
                 the admin API requires a bearer token, or listen on 127.0.0.1",
                a.listen
            ),
        );
    }
    if a.listen == server && a.listen.port() != 0 {
        bad(
            "admin.listen".into(),
            format!("`{}` is also server.listen; use another port", a.listen),
        );
    }
}

fn validate_rate(at: &str, r: &RateConfig, bad: &mut impl FnMut(String, String)) {
    if r.requests == 0 {
        bad(format!("{at}.requests"), "must be at least 1".into());
    }
    if r.per.0.is_zero() {
        bad(format!("{at}.per"), "must be more than 0".into());
    } else if r.requests > 0 && (r.per.0 / r.requests).is_zero() {
        bad(
            at.to_string(),
            "rate too high: more than one request per nanosecond".into(),
        );
    }
    if r.burst == Some(0) {
        bad(format!("{at}.burst"), "must be at least 1".into());
    }
}

/// Most warm spares per upstream.
const MAX_SPARES: u32 = 64;

fn validate_upstream(
    at: &str,
    u: &UpstreamConfig,
    seen: &mut HashSet<String>,
    bad: &mut impl FnMut(String, String),
) {
    if u.weight == 0 || u.weight > 1000 {
        bad(
            format!("{at}.weight"),
            format!("{} is not in 1..=1000", u.weight),
        );
    }
    if u.spares > MAX_SPARES {
        bad(
            format!("{at}.spares"),
            format!("{} is too many (at most {MAX_SPARES})", u.spares),
        );
    }
    if u.share as usize > shadowcat_proxy::upstream::shared::MAX_SHARE {
        bad(
            format!("{at}.share"),
            format!(
                "{} is too many (at most {})",
                u.share,
                shadowcat_proxy::upstream::shared::MAX_SHARE
            ),
        );
    }
    if u.share > 0 && u.command.is_none() {
        bad(
            format!("{at}.share"),
            "shared children are for stdio upstreams (`command`)".into(),
        );
    }
    if u.share > 0 && u.spares > 0 {
        bad(
            format!("{at}.spares"),
            "does not go with `share`: a shared child is started once and serves every session, \
             spares are children kept ahead of need for one session each; keep one of them"
                .into(),
        );
    }
    if u.spares > 0 && u.command.is_none() {
        bad(
            format!("{at}.spares"),
            "spares are children kept ahead of need: only for stdio upstreams (`command`)".into(),
        );
    }
    if let Some(url) = &u.url
        && let Err(e) = check_url(url)
    {
        bad(format!("{at}.url"), e);
    }
    if u.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
        bad(format!("{at}.command"), "must not be empty".into());
    }
    if u.command.is_some() && u.transport != super::config::UrlTransport::Streamable {
        bad(
            format!("{at}.transport"),
            "applies to HTTP upstreams (`url`), not to a stdio `command`".into(),
        );
    }
    if u.url.is_some() && (!u.env.is_empty() || !u.env_passthrough.is_empty()) {
        bad(
            at.to_string(),
            "`env` and `env_passthrough` apply to stdio upstreams (`command`): they set the child's environment"
                .into(),
        );
    }
    for (k, v) in &u.env {
        if let Err(e) = check_env_name(k) {
            bad(format!("{at}.env.{k}"), e);
        } else if v.contains('\0') {
            bad(
                format!("{at}.env.{k}"),
                "the value must not contain a NUL byte".into(),
            );
        }
    }
    for (i, k) in u.env_passthrough.iter().enumerate() {
        if let Err(e) = check_env_name(k) {
            bad(format!("{at}.env_passthrough[{i}]"), e);
        }
    }
    let http_only = !u.headers.is_empty()
        || !u.headers_env.is_empty()
        || u.bearer_env.is_some()
        || u.oauth.is_some();
    if u.command.is_some() && http_only {
        bad(
            at.to_string(),
            "`headers`, `headers_env`, `bearer_env` and `oauth` apply to HTTP upstreams (`url`); a stdio server takes credentials from its environment"
                .into(),
        );
    }
    let mut authorization = Vec::new();
    for (k, v) in &u.headers {
        if http::HeaderName::try_from(k.as_str()).is_err() {
            bad(
                format!("{at}.headers.{k}"),
                format!("`{k}` is not a valid header name"),
            );
        } else if http::HeaderValue::try_from(v.as_str()).is_err() {
            bad(
                format!("{at}.headers.{k}"),
                "the value is not a valid header value".into(),
            );
        }
        if k.eq_ignore_ascii_case("authorization") {
            authorization.push(format!("headers.{k}"));
        }
    }
    for (k, var) in &u.headers_env {
        if http::HeaderName::try_from(k.as_str()).is_err() {
            bad(
                format!("{at}.headers_env.{k}"),
                format!("`{k}` is not a valid header name"),
            );
        } else if u.headers.keys().any(|h| h.eq_ignore_ascii_case(k)) {
            bad(
                format!("{at}.headers_env.{k}"),
                format!("`{k}` is also in `headers`; keep one"),
            );
        } else if let Ok(v) = std::env::var(var)
            && http::HeaderValue::try_from(v.trim()).is_err()
        {
            bad(
                format!("{at}.headers_env.{k}"),
                format!("environment variable `{var}` is not a valid header value"),
            );
        }
        if k.eq_ignore_ascii_case("authorization") {
            authorization.push(format!("headers_env.{k}"));
        }
    }
    if u.bearer_env.is_some() {
        authorization.push("bearer_env".into());
    }
    if u.oauth.is_some() {
        authorization.push("oauth".into());
    }
    if authorization.len() > 1 {
        bad(
            format!("{at}.{}", authorization[1]),
            format!(
                "`{}` all set `Authorization`; keep one",
                authorization.join("`, `")
            ),
        );
    }
    if let Some(o) = &u.oauth {
        validate_oauth(&format!("{at}.oauth"), o, bad);
    }
    match u.spec() {
        Ok(spec) => {
            // The whole identity (describe() leaves secrets out, so it may repeat).
            let identity = match &spec {
                shadowcat_proxy::upstream::UpstreamSpec::Stdio { command, args, .. } => {
                    format!("{command}\0{}", args.join("\0"))
                }
                shadowcat_proxy::upstream::UpstreamSpec::Shared(p) => {
                    let (command, args) = p.0.command();
                    format!("{command}\0{}", args.join("\0"))
                }
                _ => format!(
                    "{:?}\0{}",
                    u.transport,
                    u.url.as_deref().unwrap_or_default()
                ),
            };
            if !seen.insert(identity) {
                bad(
                    at.to_string(),
                    format!("`{}` is listed twice in this route", spec.describe()),
                );
            }
        }
        Err(e) => {
            let field = if e.field.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{}", e.field)
            };
            bad(field, e.message);
        }
    }
}

/// What only a composite route may say, on a route that is not one.
fn validate_set_only(at: &str, r: &RouteConfig, bad: &mut impl FnMut(String, String)) {
    let composite_only = [
        ("names", r.names.is_some()),
        ("failure", r.failure.is_some()),
        ("page_size", r.page_size.is_some()),
        ("tools", !r.tools.is_empty()),
    ];
    for (field, set) in composite_only {
        if set {
            bad(
                format!("{at}.{field}"),
                "applies to composite routes ([[routes.servers]]), not to an upstream set".into(),
            );
        }
    }
}

/// A composite route: its servers (names, each as an upstream), its name rules, and what it
/// does not support.
fn validate_composite(at: &str, r: &RouteConfig, bad: &mut impl FnMut(String, String)) {
    if !r.upstreams.is_empty() {
        bad(
            at.to_string(),
            "give either `upstreams` (an upstream set: each session on one of them) or \
             `servers` (a composite route: each session over all of them), not both"
                .into(),
        );
    }
    if r.balance != Strategy::default() {
        bad(
            format!("{at}.balance"),
            "does not apply to a composite route: each session uses all of its servers".into(),
        );
    }
    let mut names = HashSet::new();
    for (j, m) in r.servers.iter().enumerate() {
        let at = format!("{at}.servers[{j}]");
        if let Err(e) = valid_server_name(&m.name) {
            bad(format!("{at}.name"), e);
        } else if !names.insert(m.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("`{}` is used by another server of this route", m.name),
            );
        }
        for (field, set) in [
            ("weight", m.weight.is_some()),
            ("spares", m.spares.is_some()),
            ("share", m.upstream.share > 0),
        ] {
            if set {
                bad(
                    format!("{at}.{field}"),
                    "is not supported on a composite route's servers (each session uses all \
                     of them, and keeps no spares or shared children)"
                        .into(),
                );
            }
        }
        if let Some(t) = &m.tools {
            for (field, message) in t.problems() {
                bad(format!("{at}.tools.{field}"), message);
            }
        }
        if m.new_tools.is_some() && m.pinning.unwrap_or(r.pinning) == crate::pins::Pinning::Off {
            bad(
                format!("{at}.new_tools"),
                "does nothing with pinning off for this server: set `pinning = \"warn\"` or \
                 `\"enforce\"` on it or on the route"
                    .into(),
            );
        }
        validate_server_resilience(&at, r, m, bad);
        if m.has_set() {
            validate_member_set(&at, m, bad);
        } else {
            if m.balance.is_some() {
                bad(
                    format!("{at}.balance"),
                    "balances a server's upstream set ([[routes.servers.upstreams]]); this \
                     server has one upstream"
                        .into(),
                );
            }
            // The same server twice under two names is allowed (e.g. one command with two
            // environments), so each is checked on its own.
            validate_upstream(&at, &m.upstream, &mut HashSet::new(), bad);
        }
    }
    for (k, entry) in r.tools.iter().enumerate() {
        match entry.split_once(':') {
            Some((server, glob)) if names.contains(server) && !glob.is_empty() => {}
            Some((server, _)) if !names.contains(server) => bad(
                format!("{at}.tools[{k}]"),
                format!("`{server}` is not a server of this route"),
            ),
            _ => bad(
                format!("{at}.tools[{k}]"),
                format!("`{entry}` must be `server:tool` (the tool may use `*`)"),
            ),
        }
    }
    if let Some(n) = &r.names {
        if let Err(e) = valid_separator(&n.separator) {
            bad(format!("{at}.names.separator"), e);
        }
        if !(1..=MAX_NAME_LEN).contains(&n.max_len) {
            bad(
                format!("{at}.names.max_len"),
                format!("{} is not between 1 and {MAX_NAME_LEN}", n.max_len),
            );
        }
    }
}

/// The settings protecting server `m`'s upstreams (at `at`, `routes[0].servers[1]`): those it
/// sets, checked as a route's are. A problem it inherits from route `r` is reported at the
/// route only.
fn validate_server_resilience(
    at: &str,
    r: &RouteConfig,
    m: &crate::config::MemberConfig,
    bad: &mut impl FnMut(String, String),
) {
    let mut inherited = Vec::new();
    super::resilience::validate("", &r.resilience(), &mut |f, msg| inherited.push((f, msg)));
    super::resilience::validate("", &r.server_resilience(m), &mut |f, msg| {
        if !inherited.iter().any(|(g, gm)| *g == f && *gm == msg) {
            bad(format!("{at}{f}"), msg);
        }
    });
}

/// A composite route's server with an upstream set: no upstream of its own besides the set, and
/// each upstream of the set as a plain route's (no two the same), without spares or shared
/// children (a member's leg is opened by its composite session).
fn validate_member_set(
    at: &str,
    m: &crate::config::MemberConfig,
    bad: &mut impl FnMut(String, String),
) {
    let u = &m.upstream;
    let own = [
        ("url", u.url.is_some()),
        ("command", u.command.is_some()),
        ("args", !u.args.is_empty()),
        ("headers", !u.headers.is_empty()),
        ("headers_env", !u.headers_env.is_empty()),
        ("bearer_env", u.bearer_env.is_some()),
        ("oauth", u.oauth.is_some()),
        ("env", !u.env.is_empty()),
        ("env_passthrough", !u.env_passthrough.is_empty()),
        ("share", u.share > 0),
    ];
    for (field, set) in own {
        if set {
            bad(
                format!("{at}.{field}"),
                "give a server either one upstream (`url` or `command`…) or an upstream set \
                 ([[routes.servers.upstreams]]), not both: move it into the set's upstreams"
                    .into(),
            );
        }
    }
    let mut seen = HashSet::new();
    for (k, u) in m.upstreams.iter().enumerate() {
        let at = format!("{at}.upstreams[{k}]");
        for (field, set) in [("spares", u.spares > 0), ("share", u.share > 0)] {
            if set {
                bad(
                    format!("{at}.{field}"),
                    "is not supported on a composite route's servers (a member's leg is opened \
                     by its composite session, which keeps no spares or shared children)"
                        .into(),
                );
            }
        }
        validate_upstream(&at, u, &mut seen, bad);
    }
}

/// An environment variable name: not empty, no `=` or NUL.
fn check_env_name(k: &str) -> Result<(), String> {
    if k.is_empty() || k.contains(['=', '\0']) {
        return Err(format!(
            "`{k}` is not an environment variable name (not empty, no `=`)"
        ));
    }
    Ok(())
}

/// A URL the gateway trusts what it gets from, or sends secrets to (a token endpoint, a JWKS):
/// https://, plain http:// only on loopback (OAuth 2.1 §1.5); `why` says what is at stake.
fn check_tls_url(u: &str, why: &str) -> Result<(), String> {
    check_url(u)?;
    let url = reqwest::Url::parse(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback {
        return Err(format!(
            "`{u}` must be https:// (plain http:// only on loopback): {why}"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("`{u}` must not have a #fragment"));
    }
    Ok(())
}

fn validate_oauth(at: &str, o: &OAuthConfig, bad: &mut impl FnMut(String, String)) {
    if let Err(e) = check_tls_url(&o.token_url, "the client secret is sent to it") {
        bad(format!("{at}.token_url"), e);
    }
    if o.client_id.trim().is_empty() {
        bad(format!("{at}.client_id"), "must not be empty".into());
    }
    if let Some(r) = &o.resource {
        match reqwest::Url::parse(r) {
            Ok(u) if u.fragment().is_some() => bad(
                format!("{at}.resource"),
                format!("`{r}` must not have a #fragment (RFC 8707)"),
            ),
            Ok(_) => {}
            Err(e) => bad(
                format!("{at}.resource"),
                format!("`{r}` is not an absolute URI (RFC 8707): {e}"),
            ),
        }
    }
    if o.audience.as_deref().is_some_and(|a| a.trim().is_empty()) {
        bad(format!("{at}.audience"), "must not be empty".into());
    }
    if o.timeout.0.is_zero() {
        bad(format!("{at}.timeout"), "must be more than 0".into());
    }
}

fn validate_limits_backend(cfg: &GatewayConfig, bad: &mut impl FnMut(String, String)) {
    let l = &cfg.limits;
    if let Some(u) = &l.redis_url {
        if !is_redis_url(u) {
            bad(
                "limits.redis_url".into(),
                "must be a redis://, rediss://, redis+unix://, redis+cluster:// or redis+sentinel:// URL".into(),
            );
        } else if let Err(e) = shadowcat_store::check_spec(u) {
            bad("limits.redis_url".into(), e.to_string());
        }
    }
    if l.redis_timeout.0.is_zero() {
        bad("limits.redis_timeout".into(), "must be more than 0".into());
    }
    if l.backend == LimitsBackend::Redis && l.shared_redis(&cfg.server).is_none() {
        bad(
            "limits.backend".into(),
            format!(
                "`redis` needs a Redis: set limits.redis_url, or use a Redis server.store (it is `{}`)",
                cfg.server.store
            ),
        );
    }
    if l.backend == LimitsBackend::Local && l.redis_url.is_some() {
        bad(
            "limits.redis_url".into(),
            "is only used with backend = \"redis\"".into(),
        );
    }
}
