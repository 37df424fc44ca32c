//! The gateway's configuration file (TOML): the schema. Loading and validation are in
//! `validate.rs`.
//!
//! Parsing reports the first syntax or type error with its line, column and field path;
//! validation then reports *every* semantic problem, each naming the file, the field (as a path
//! such as `routes[0].upstreams[1].url`) and what is wrong. See `examples/gateway.toml`.

use super::resilience::{
    BreakerOverride, BreakerSection, HealthOverride, Resilience, RetryOverride, RetrySection,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use shadowcat_proxy::upstream::composite::names::{
    DEFAULT_SEPARATOR, MAX_NAME_LEN, NameRules, PrefixMode,
};
use shadowcat_proxy::upstream::composite::{CompositeSpec, Failure, Member, Shaper};
use shadowcat_proxy::upstream::credentials::{AuthMethod, Credentials, OAuthClient};
use shadowcat_proxy::upstream::{ChildEnv, UpstreamSpec};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a field path (`routes[0].upstreams[1].url`), empty for the file as a whole.
    pub field: String,
    /// Line and column (1-based) when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong and what to do.
    pub message: String,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file (as given).
    pub file: String,
    /// Every problem found (at least one).
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.file)?;
            if let Some((line, col)) = p.position {
                write!(f, ":{line}:{col}")?;
            }
            if !p.field.is_empty() {
                write!(f, ": {}", p.field)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn one(file: &str, field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            problems: vec![Problem {
                field: field.to_string(),
                position: None,
                message: message.into(),
            }],
        }
    }
}

/// A duration written as `"500ms"`, `"10s"`, `"5m"`, `"1h"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parse the string form.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration (use e.g. \"500ms\", \"10s\", \"5m\", \"1h\")")
        })?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "unknown duration unit `{u}` in `{s}` (use ms, s, m or h)"
                ));
            }
        };
        Duration::try_from_secs_f64(n * scale)
            .map(Dur)
            .map_err(|_| format!("`{s}` is out of range"))
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: \"500ms\", \"10s\", \"5m\", \"1h\", or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h)?\\s*$"},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// The schema of the engine's `Failure` (`open` or `closed`), for the configuration's schema.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // read by the schema only
enum FailureSchema {
    Open,
    Closed,
}

/// The schema of the engine's `PrefixMode`, for the configuration's schema.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // read by the schema only
enum PrefixModeSchema {
    Always,
    OnConflict,
    Never,
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"500ms\", \"5m\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom("a duration must be a non-negative number of seconds"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    /// The string form (`"10s"`, `"500ms"`), as the file would say it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            s.serialize_f64(self.0.as_secs_f64())
        } else if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listener, store and front settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Client authentication (absent: none).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Rate limits (absent: none).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// MCP endpoints, each with its upstream set.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The admin listener (absent: none).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The `/metrics` endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The audit log (absent: none; `--audit` on the command line also turns it on).
    #[serde(default)]
    pub audit: Option<AuditFileConfig>,
}

/// `[audit]`: one JSON line per client request (see docs/audit.md).
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditFileConfig {
    /// A file (created with mode 0600, rotated by size), or `-` for standard output.
    pub path: String,
    /// What is kept of `tools/call` and `prompts/get` arguments.
    #[serde(default)]
    pub arguments: AuditArguments,
    /// Rotate the file when it would grow past this many bytes.
    #[serde(default = "default_audit_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` … `PATH.N`).
    #[serde(default = "default_audit_keep")]
    pub keep: usize,
    /// Read the key of the arguments' HMAC (`arguments = "hash"`) from this environment
    /// variable at start (absent: a random key per process).
    #[serde(default)]
    pub hash_key_env: Option<String>,
    /// Also redact the value at these JSON pointers (`arguments = "redacted"`).
    #[serde(default)]
    pub redact_pointers: Vec<String>,
    /// Also redact every match of these regexes inside JSON strings (`arguments = "redacted"`).
    #[serde(default)]
    pub redact_patterns: Vec<String>,
}

/// What the audit log keeps of a request's arguments.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuditArguments {
    /// Nothing.
    #[default]
    None,
    /// An HMAC-SHA256 of them.
    Hash,
    /// The arguments with the redaction rules applied.
    Redacted,
}

fn default_audit_max_bytes() -> u64 {
    shadowcat_proxy::audit::DEFAULT_MAX_BYTES
}

fn default_audit_keep() -> usize {
    shadowcat_proxy::audit::DEFAULT_KEEP
}

impl AuditFileConfig {
    /// The engine's settings (the hash key read from its variable now).
    pub fn resolve(&self) -> Result<shadowcat_proxy::audit::AuditConfig, String> {
        use shadowcat_proxy::audit::Arguments;
        let hash_key = match &self.hash_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => {
                    return Err(format!(
                        "environment variable `{var}` (audit.hash_key_env) is not set or empty"
                    ));
                }
            },
        };
        Ok(shadowcat_proxy::audit::AuditConfig {
            path: (self.path != "-").then(|| self.path.clone().into()),
            arguments: match self.arguments {
                AuditArguments::None => Arguments::None,
                AuditArguments::Hash => Arguments::Hash,
                AuditArguments::Redacted => Arguments::Redacted,
            },
            max_bytes: self.max_bytes,
            keep: self.keep,
            replica: None,
            redact: shadowcat_tape::RedactConfig {
                pointers: self.redact_pointers.clone(),
                patterns: self.redact_patterns.clone(),
            },
            hash_key,
        })
    }

    /// What is wrong with these settings, field by field (checked by `config check` too).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.path.trim().is_empty() {
            out.push((
                "audit.path",
                "must name a file, or `-` for standard output".into(),
            ));
        }
        if self.max_bytes == 0 {
            out.push(("audit.max_bytes", "must be above 0".into()));
        }
        if self.keep == 0 {
            out.push(("audit.keep", "must be at least 1".into()));
        }
        if let Err(e) = shadowcat_tape::Redactor::new(&shadowcat_tape::RedactConfig {
            pointers: self.redact_pointers.clone(),
            patterns: self.redact_patterns.clone(),
        }) {
            out.push(("audit", e.to_string()));
        }
        out
    }
}

/// `[metrics]`: who may read `/metrics` (it names routes and upstreams).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Read the bearer token `/metrics` requires from this environment variable at start
    /// (absent: `/metrics` is open to whoever reaches the listener).
    #[serde(default)]
    pub token_env: Option<String>,
}

impl MetricsConfig {
    /// The token from the variable `token_env` names; `None` without `token_env`.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        let Some(var) = &self.token_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            Ok(_) => Err(format!("environment variable `{var}` (token_env) is empty")),
            Err(_) => Err(format!(
                "environment variable `{var}` (token_env) is not set"
            )),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_store() -> String {
    "memory".into()
}
fn default_redis_prefix() -> String {
    "shadowcat:".into()
}
fn default_max_sessions() -> usize {
    1000
}
fn default_idle() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_deadline() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_drain_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_max_message() -> usize {
    10 * 1024 * 1024
}
fn default_max_events() -> usize {
    shadowcat_proxy::front::http::DEFAULT_MAX_EVENTS
}
fn default_max_event_bytes() -> u64 {
    shadowcat_proxy::front::http::DEFAULT_MAX_EVENT_BYTES
}
fn default_event_max_age() -> Dur {
    Dur(shadowcat_proxy::front::http::DEFAULT_EVENT_MAX_AGE)
}
fn default_finished_stream_grace() -> Dur {
    Dur(shadowcat_proxy::front::http::DEFAULT_FINISHED_STREAM_GRACE)
}
fn default_header_timeout() -> Dur {
    Dur(shadowcat_proxy::front::conn::ConnLimits::default().header_timeout)
}
fn default_body_timeout() -> Dur {
    Dur(shadowcat_proxy::front::conn::ConnLimits::default().body_timeout)
}
fn default_keep_alive_timeout() -> Dur {
    Dur(shadowcat_proxy::front::conn::ConnLimits::default().idle_timeout)
}
fn default_max_connections() -> usize {
    shadowcat_proxy::front::conn::ConnLimits::default().max_connections
}
fn default_outage() -> String {
    "closed".into()
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The public base URL clients use (`https://mcp.example.com`): the resource identifiers of
    /// the OAuth metadata are built from it. Required with `[auth]`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Session store: `memory`, `sqlite:PATH`, `redis://…` (also `rediss://`,
    /// `redis+unix:///path`), `redis+cluster://HOST:PORT[,HOST:PORT…]` (a Redis Cluster, from
    /// its seed nodes) or `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB]` (the primary
    /// the Sentinels name).
    #[serde(default = "default_store")]
    pub store: String,
    /// Prefix of every Redis key (no `{` or `}`: Shadowcat adds its own hash tags).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// While a shared store is unreachable: `closed` (503) or `memory`.
    #[serde(default = "default_outage")]
    pub on_store_outage: String,
    /// This replica's id in the store (default: the host name).
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Most live sessions of every kind together (Streamable HTTP, legacy HTTP+SSE, sessions
    /// held for 2026-07-28 clients, sessions adopted from another replica).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Most live sessions of one authenticated principal (default: no per-principal limit).
    #[serde(default)]
    pub max_sessions_per_principal: Option<usize>,
    /// Idle sessions are reaped after this long.
    #[serde(default = "default_idle")]
    pub idle_timeout: Dur,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "default_deadline")]
    pub shutdown_deadline: Dur,
    /// Grace given to a stdio child after stdin closes, and again after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Largest message accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// SSE events kept per stream for resumption.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Most payload bytes one session's SSE event log holds, all its streams together (the
    /// oldest events go first).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u64,
    /// SSE events older than this are dropped from the log.
    #[serde(default = "default_event_max_age")]
    pub event_max_age: Dur,
    /// How long a finished POST stream's events stay resumable.
    #[serde(default = "default_finished_stream_grace")]
    pub finished_stream_grace: Dur,
    /// Browser origins allowed besides loopback ones (`*` for any).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// `Host` names served besides loopback ones and `public_url`'s host (any port). On a
    /// loopback listener other names get 403 (DNS rebinding); elsewhere every name is served
    /// unless this is set.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Threads serving client connections (default: one per CPU).
    #[serde(default)]
    pub workers: Option<usize>,
    /// A request head must arrive within this (from the connection's start, or from its first
    /// byte after an idle spell); the connection is closed otherwise.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Dur,
    /// A request body must arrive within this of its head (`408`, connection closed).
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Dur,
    /// A keep-alive connection with nothing in flight is closed after this.
    #[serde(default = "default_keep_alive_timeout")]
    pub keep_alive_timeout: Dur,
    /// Most client connections served at once; more are accepted and closed immediately.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// After a configuration reload removes an upstream (or its route, or changes it), the
    /// sessions on it keep working this long, then end with an error saying why (at most 1 h;
    /// `0s`: at once). The one `[server]` setting a reload may change.
    #[serde(default = "default_drain_grace")]
    pub drain_grace: Dur,
}

impl ServerConfig {
    /// The listener's connection timeouts and limit (the admin listener's too).
    pub fn conn_limits(&self) -> shadowcat_proxy::front::conn::ConnLimits {
        shadowcat_proxy::front::conn::ConnLimits {
            header_timeout: self.header_timeout.0,
            body_timeout: self.body_timeout.0,
            idle_timeout: self.keep_alive_timeout.0,
            max_connections: self.max_connections,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            public_url: None,
            store: default_store(),
            redis_prefix: default_redis_prefix(),
            on_store_outage: default_outage(),
            replica_id: None,
            max_sessions: default_max_sessions(),
            max_sessions_per_principal: None,
            idle_timeout: default_idle(),
            shutdown_deadline: default_deadline(),
            shutdown_grace: default_grace(),
            max_message: default_max_message(),
            max_events: default_max_events(),
            max_event_bytes: default_max_event_bytes(),
            event_max_age: default_event_max_age(),
            finished_stream_grace: default_finished_stream_grace(),
            allow_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            workers: None,
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            keep_alive_timeout: default_keep_alive_timeout(),
            max_connections: default_max_connections(),
            drain_grace: default_drain_grace(),
        }
    }
}

/// `[auth]`: the gateway as an OAuth 2.1 resource server, and static API keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Scopes every route requires.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Authorization servers listed in the protected-resource metadata (default: the JWT issuer).
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Bearer JWTs from an authorization server.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Static API keys (presented as `Authorization: Bearer KEY`), stored as SHA-256 hex.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_jwks_cache() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_jwks_min_refetch() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_principal_claim() -> String {
    "sub".into()
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (the token must name at least one).
    pub audience: Vec<String>,
    /// Where the issuer publishes its signing keys (https://, or http:// on loopback).
    pub jwks_url: String,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Keys are refetched after this long.
    #[serde(default = "default_jwks_cache")]
    pub jwks_cache: Dur,
    /// A token with an unknown `kid` refetches the keys at most this often.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch: Dur,
    /// The claim naming the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
}

/// One `[[auth.api_keys]]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds it (the principal is `key:NAME`).
    pub name: String,
    /// SHA-256 of the key, hex (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// Scopes it grants.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Where rate-limit state lives.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    /// In this process (each replica enforces its own limits).
    #[default]
    Local,
    /// In Redis: every replica sharing it enforces one limit.
    Redis,
}

/// What the Redis-backed limiter does while Redis is unreachable.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RedisOutage {
    /// Fall back to this replica's in-process limits (logged and counted).
    #[default]
    Local,
    /// Refuse requests (503) until Redis is back.
    Deny,
}

fn default_redis_timeout() -> Dur {
    Dur(Duration::from_millis(500))
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `local` (default) or `redis` (one limit shared by every replica).
    #[serde(default)]
    pub backend: LimitsBackend,
    /// Redis for `backend = "redis"` (default: `server.store` when it is a Redis URL).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// While Redis is unreachable: `local` (default) or `deny`.
    #[serde(default)]
    pub on_redis_outage: RedisOutage,
    /// A Redis check that takes longer counts as an outage.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout: Dur,
    /// All requests together.
    #[serde(default)]
    pub global: Option<RateConfig>,
    /// Each authenticated principal.
    #[serde(default)]
    pub per_principal: Option<RateConfig>,
    /// Each client IP.
    #[serde(default)]
    pub per_ip: Option<RateConfig>,
    /// `tools/call` of each named tool (all clients together).
    #[serde(default)]
    pub per_tool: BTreeMap<String, RateConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimitsBackend::default(),
            redis_url: None,
            on_redis_outage: RedisOutage::default(),
            redis_timeout: default_redis_timeout(),
            global: None,
            per_principal: None,
            per_ip: None,
            per_tool: BTreeMap::new(),
        }
    }
}

impl LimitsConfig {
    /// The Redis of `backend = "redis"`: `redis_url`, else `server.store` if it is a Redis URL.
    pub fn shared_redis<'a>(&'a self, server: &'a ServerConfig) -> Option<&'a str> {
        match &self.redis_url {
            Some(u) => Some(u.as_str()),
            None => is_redis_url(&server.store).then_some(server.store.as_str()),
        }
    }
}

/// Whether a string names a Redis server (`redis://`, `rediss://`, `redis+unix://`), a Redis
/// Cluster (`redis+cluster://`) or a Sentinel-monitored primary (`redis+sentinel://`).
pub fn is_redis_url(s: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+unix://",
        "redis+cluster://",
        "redis+sentinel://",
    ]
    .iter()
    .any(|p| s.trim().starts_with(p))
}

/// A GCRA rate: `requests` per `per`, bursts of up to `burst` (default: `requests`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period.
    pub per: Dur,
    /// Largest burst.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateConfig {
    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests).max(1)
    }
    /// Time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.per.0 / self.requests.max(1)
    }
}

/// How a route picks the upstream of a new session.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// Each in turn, `weight` times as often (smooth weighted round-robin).
    #[serde(alias = "weighted")]
    WeightedRoundRobin,
    /// The one with the fewest requests in flight (then the fewest sessions).
    LeastInFlight,
    /// Random, proportional to `weight`.
    Random,
    /// A hash ring over the session id (weight = share of the ring).
    ConsistentHash,
}

impl Strategy {
    /// The name used in the file.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::WeightedRoundRobin => "weighted-round-robin",
            Strategy::LeastInFlight => "least-in-flight",
            Strategy::Random => "random",
            Strategy::ConsistentHash => "consistent-hash",
        }
    }
    /// Parse a name (for command-line flags).
    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s)).ok()
    }
}

fn default_true() -> bool {
    true
}
fn default_eject() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_probe() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_weight() -> u32 {
    1
}

/// What an authorization rule decides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it (JSON-RPC error saying why; hidden from lists).
    Deny,
}

/// One `[[routes.rules]]`: who × method × tool/prompt/resource. Every list given must match
/// (an empty list matches anything); names and URIs may use `*`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `allow` or `deny`.
    pub effect: Effect,
    /// Principal ids (`jwt:alice`, `key:ci`, `jwt:*`): any of them.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Scopes the principal must all have.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// JWT claims that must have these values (a string claim equal, or an array containing it).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// JSON-RPC methods (`tools/call`, `resources/*`): any of them.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Tool names (`tools/call`; filters `tools/list`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Prompt names (`prompts/get`; filters `prompts/list`).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Resource URIs (`resources/read`, `subscribe`, `unsubscribe`; filters `resources/list`).
    #[serde(default)]
    pub resources: Vec<String>,
}

fn default_health_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_health_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// `[routes.health]`: active checks of the route's HTTP upstreams.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between checks.
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    /// A check that takes longer failed.
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive successes that make an unhealthy upstream healthy again.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy upstream unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// `GET` this path on the upstream's origin (2xx = healthy). Without it, a TCP connect.
    #[serde(default)]
    pub http_path: Option<String>,
    /// What a check does (default: `http` with `http_path`, else `tcp`).
    #[serde(default)]
    pub check: Option<HealthCheck>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            http_path: None,
            check: None,
        }
    }
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// A TCP connect to the upstream's host and port (HTTP upstreams).
    Tcp,
    /// `GET http_path` on the upstream's origin, 2xx = healthy (HTTP upstreams).
    Http,
    /// MCP `ping` over a session kept open with the upstream (every kind, stdio included).
    Ping,
}

impl HealthConfig {
    /// The check configured, with its default.
    pub fn kind(&self) -> HealthCheck {
        self.check.unwrap_or(if self.http_path.is_some() {
            HealthCheck::Http
        } else {
            HealthCheck::Tcp
        })
    }
}

/// One `[[routes]]`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `/mcp` or `/servers/NAME/mcp`.
    pub path: String,
    /// Balancing strategy for new sessions.
    #[serde(default)]
    pub balance: Strategy,
    /// Scopes this route requires (besides `auth.scopes`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Try the next upstream when a new session's upstream cannot be reached.
    #[serde(default = "default_true")]
    pub failover: bool,
    /// An upstream that failed to connect gets no new sessions for this long.
    #[serde(default = "default_eject")]
    pub eject_for: Dur,
    /// Connect timeout of the reachability probe of HTTP upstreams (with failover).
    #[serde(default = "default_probe")]
    pub connect_timeout: Dur,
    /// The upstream set.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// A composite route's member servers, instead of `upstreams`: each session is one session
    /// over all of them (tools and prompts named `<server><separator><name>`, resources
    /// `<server>+<uri>`).
    #[serde(default)]
    pub servers: Vec<MemberConfig>,
    /// Composite routes: how the members' tool and prompt names are exposed.
    #[serde(default)]
    pub names: Option<NamesConfig>,
    /// Composite routes: what a member failure does (`open`: the others carry on, the failed
    /// one is restarted; `closed`: the session fails). Default `open`.
    #[serde(default)]
    #[schemars(with = "Option<FailureSchema>")]
    pub failure: Option<Failure>,
    /// Composite routes: items per page of a merged list (default 0: the whole list at once).
    #[serde(default)]
    pub page_size: Option<usize>,
    /// Tool and prompt pinning on this route (docs/pins.md): `off`, `warn` or `enforce`.
    #[serde(default)]
    pub pinning: crate::pins::Pinning,
    /// A tool the route has never seen: `allow` (trusted on first use) or `hold` (until
    /// approved). Applies with `pinning` on.
    #[serde(default)]
    pub new_tools: crate::pins::NewTools,
    /// Composite routes: a *virtual server* — only these tools, as `server:glob` (`*` = any
    /// run of characters), e.g. `["github:create_issue", "jira:*"]`. Default: every tool.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Authorization rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The decision when no rule matches.
    #[serde(default)]
    pub default_effect: Effect,
    /// Active health checks (absent: none; connection failures still eject).
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Circuit breaker of each upstream (on by default).
    #[serde(default)]
    pub breaker: BreakerSection,
    /// Retries where safe, under a budget.
    #[serde(default)]
    pub retry: RetrySection,
    /// Longest wait for an upstream's answer to a request (`0`: no limit).
    #[serde(default = "super::resilience::default_request_timeout")]
    pub request_timeout: Dur,
    /// Longest silence on an upstream response stream before it counts as broken (`0`: none).
    #[serde(default = "super::resilience::default_sse_idle_timeout")]
    pub sse_idle_timeout: Dur,
}

/// One `[[routes.upstreams]]`: `url = …` or `command = …` (+ `args`).
///
/// Upstream credentials (HTTP upstreams; the client's own `Authorization` is never forwarded):
/// static `headers`, header values from the environment (`headers_env`), `bearer_env`, or an
/// OAuth client-credentials token (`[routes.upstreams.oauth]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A Streamable HTTP server.
    #[serde(default)]
    pub url: Option<String>,
    /// A stdio server: one child per session.
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Share of new sessions.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Stdio upstreams: children kept running ahead of need, so a new session does not wait for
    /// a spawn (each still serves one session).
    #[serde(default)]
    pub spares: u32,
    /// Stdio upstreams: `K` children shared by every session placed here instead of a child
    /// per session (`0`, the default: a child per session). See docs/gateway.md for what a
    /// shared child cannot keep apart.
    #[serde(default)]
    pub share: u32,
    /// Headers sent with every upstream request (upstream credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from environment variables at start: header → variable.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Send `Authorization: Bearer $VAR` (read at start) to this upstream.
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// Get `Authorization: Bearer …` from an OAuth 2.1 token endpoint (client credentials).
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
    /// How `url` is spoken (era translation and transport detection).
    #[serde(default)]
    pub transport: UrlTransport,
    /// Stdio upstreams: variables set in the child's environment. A child starts from a
    /// minimal environment ([`shadowcat_proxy::upstream::MINIMAL_ENV`] and `LC_*`), never the gateway's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Stdio upstreams: variables passed on from the gateway's environment (when set there).
    #[serde(default)]
    pub env_passthrough: Vec<String>,
}

/// One `[[routes.servers]]`: a member server of a composite route, its `name` and, as in
/// `[[routes.upstreams]]`, where it is (`url` or `command`, credentials, environment) — or,
/// instead, an upstream set of its own (`[[routes.servers.upstreams]]`, balanced with
/// `balance`), each of whose sessions' legs goes to one of them. Either way the server's
/// upstreams are protected by the route's `failover`, `eject_for`, `connect_timeout`,
/// `health`, `breaker`, `retry`, `request_timeout` and `sse_idle_timeout`, unless it sets its
/// own (see [`RouteConfig::server_resilience`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The prefix of its tools and prompts: lowercase letters, digits and `-` (at most 32).
    pub name: String,
    /// Not supported on a composite route's servers (each session uses all of them): read only
    /// to be refused with its field path.
    #[serde(default, skip_serializing)]
    pub weight: Option<u32>,
    /// Not supported on a composite route's servers yet: read only to be refused.
    #[serde(default, skip_serializing)]
    pub spares: Option<u32>,
    /// How its tools are shown and called (`[routes.servers.tools]`: allow/deny, rename,
    /// describe, fixed parameters, defaults).
    #[serde(default)]
    pub tools: Option<crate::shape::ToolsConfig>,
    /// Its upstream set, instead of one upstream: each composite session's leg to this server
    /// goes to one of them (balanced, health-checked, failed over, each with its breaker, as a
    /// plain route's upstreams).
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Balancing strategy over `upstreams` (default `round_robin`).
    #[serde(default)]
    pub balance: Option<Strategy>,
    /// Tool and prompt pinning of this server's tools and prompts (docs/pins.md): `off`,
    /// `warn` or `enforce`. Default: the route's `pinning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinning: Option<crate::pins::Pinning>,
    /// A tool of this server the route has never seen: `allow` or `hold`. Default: the
    /// route's `new_tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tools: Option<crate::pins::NewTools>,
    /// A leg that cannot start on one of its upstreams tries the next. Default: the route's
    /// `failover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    /// An upstream of it that failed to connect gets no new leg for this long. Default: the
    /// route's `eject_for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eject_for: Option<Dur>,
    /// Connect timeout of the reachability probe of its HTTP upstreams (with failover).
    /// Default: the route's `connect_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    /// Active health checks of its upstreams (`[routes.servers.health]`); each setting left
    /// out is the route's `[routes.health]`; `enabled = false`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthOverride>,
    /// Its upstreams' circuit breakers (`[routes.servers.breaker]`); each setting left out is
    /// the route's `[routes.breaker]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerOverride>,
    /// Retries of its requests (`[routes.servers.retry]`); each setting left out is the
    /// route's `[routes.retry]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOverride>,
    /// Longest wait for its answer to a request (`0`: no limit). Default: the route's
    /// `request_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Dur>,
    /// Longest silence on one of its response streams before it counts as broken (`0`:
    /// none). Default: the route's `sse_idle_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_idle_timeout: Option<Dur>,
    /// Where it is: the fields of an upstream (without `upstreams`).
    #[serde(flatten)]
    pub upstream: UpstreamConfig,
}

impl MemberConfig {
    /// Whether it has an upstream set (`[[routes.servers.upstreams]]`) rather than one upstream.
    pub fn has_set(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Its upstreams: its set, or its one upstream (a set of one).
    pub fn set_upstreams(&self) -> &[UpstreamConfig] {
        if self.has_set() {
            &self.upstreams
        } else {
            std::slice::from_ref(&self.upstream)
        }
    }

    /// Its upstreams' specs, credentials resolved: its set, or its one upstream. An error's
    /// field is relative to the server (`upstreams[1].bearer_env`, or `bearer_env`).
    pub fn specs(&self) -> Result<Vec<UpstreamSpec>, UpstreamError> {
        if !self.has_set() {
            return Ok(vec![self.upstream.spec()?]);
        }
        self.upstreams
            .iter()
            .enumerate()
            .map(|(k, u)| {
                u.spec().map_err(|e| UpstreamError {
                    field: if e.field.is_empty() {
                        format!("upstreams[{k}]")
                    } else {
                        format!("upstreams[{k}].{}", e.field)
                    },
                    message: e.message,
                })
            })
            .collect()
    }
}

fn default_separator() -> String {
    DEFAULT_SEPARATOR.to_string()
}
fn default_max_len() -> usize {
    MAX_NAME_LEN
}

/// `[routes.names]`: a composite route's exposed names.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamesConfig {
    /// Between the server's name and its tool's: 1 to 4 characters, each `_` or `-`.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// The longest exposed name (1..=64; longer names are shortened with a hash suffix).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// `always` (default), `on_conflict` (bare names unless two servers share one) or `never`.
    #[serde(default)]
    #[schemars(with = "PrefixModeSchema")]
    pub prefix: PrefixMode,
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            separator: default_separator(),
            max_len: default_max_len(),
            prefix: PrefixMode::default(),
        }
    }
}

impl NamesConfig {
    /// The engine's rules.
    pub fn rules(&self) -> NameRules {
        NameRules {
            separator: self.separator.clone(),
            max_len: self.max_len,
            mode: self.prefix,
        }
    }
}

impl RouteConfig {
    /// Tool pinning is on for the route or for one of its servers.
    pub fn pinning_on(&self) -> bool {
        let on = |p: crate::pins::Pinning| p != crate::pins::Pinning::Off;
        on(self.pinning) || self.servers.iter().any(|m| m.pinning.is_some_and(on))
    }

    /// A composite route (`servers`) rather than an upstream set (`upstreams`).
    pub fn is_composite(&self) -> bool {
        !self.servers.is_empty()
    }

    /// What protects its upstreams (a plain route's set; on a composite route, what each
    /// server's settings start from).
    pub fn resilience(&self) -> Resilience {
        Resilience {
            failover: self.failover,
            eject_for: self.eject_for,
            connect_timeout: self.connect_timeout,
            health: self.health.clone(),
            breaker: self.breaker.clone(),
            retry: self.retry.clone(),
            request_timeout: self.request_timeout,
            sse_idle_timeout: self.sse_idle_timeout,
        }
    }

    /// What protects the upstreams of its server `m`: each setting `m` gives, and the
    /// route's for the others (a `breaker`, `retry` or `health` section field by field).
    pub fn server_resilience(&self, m: &MemberConfig) -> Resilience {
        Resilience {
            failover: m.failover.unwrap_or(self.failover),
            eject_for: m.eject_for.unwrap_or(self.eject_for),
            connect_timeout: m.connect_timeout.unwrap_or(self.connect_timeout),
            health: match &m.health {
                Some(h) => h.over(self.health.as_ref()),
                None => self.health.clone(),
            },
            breaker: m
                .breaker
                .as_ref()
                .map_or_else(|| self.breaker.clone(), |b| b.over(&self.breaker)),
            retry: m
                .retry
                .as_ref()
                .map_or_else(|| self.retry.clone(), |r| r.over(&self.retry)),
            request_timeout: m.request_timeout.unwrap_or(self.request_timeout),
            sse_idle_timeout: m.sse_idle_timeout.unwrap_or(self.sse_idle_timeout),
        }
    }

    /// A composite route's spec, its servers' credentials resolved (`None` for an upstream
    /// set). An error's field is relative to the route (`servers[1].bearer_env`).
    pub fn composite(&self) -> Option<Result<CompositeSpec, UpstreamError>> {
        if !self.is_composite() {
            return None;
        }
        let members = self
            .servers
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let spec = m.specs().map_err(|e| UpstreamError {
                    field: if e.field.is_empty() {
                        format!("servers[{j}]")
                    } else {
                        format!("servers[{j}].{}", e.field)
                    },
                    message: e.message,
                })?;
                // The first of a set names the member in logs; the set is placed by the
                // gateway's placer (see `live`).
                let spec = spec.into_iter().next().ok_or_else(|| UpstreamError {
                    field: format!("servers[{j}].upstreams"),
                    message: "no upstreams".into(),
                })?;
                let shaper = crate::shape::ToolShape::new(&m.name, m.tools.as_ref(), &self.tools)
                    .map(|s| Arc::new(s) as Arc<dyn Shaper>);
                Ok(Member {
                    shaper,
                    ..Member::new(m.name.clone(), spec)
                })
            })
            .collect::<Result<Vec<_>, UpstreamError>>();
        Some(members.map(|members| CompositeSpec {
            members,
            names: self.names.clone().unwrap_or_default().rules(),
            failure: self.failure.unwrap_or_default(),
            page_size: self.page_size.unwrap_or(0),
        }))
    }
}

fn default_refresh_before() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_token_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// How the gateway authenticates at the token endpoint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OAuthAuthMethod {
    /// HTTP Basic with the client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// `[routes.upstreams.oauth]`: the OAuth 2.1 client-credentials grant. The token is fetched on
/// first use, shared by every upstream with the same client, refreshed before it expires and
/// refetched when the upstream answers `401`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The authorization server's token endpoint (https://, or http:// on loopback).
    pub token_url: String,
    /// The gateway's client id.
    pub client_id: String,
    /// Environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the client secret (surrounding whitespace ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `scope` requested (space-separated).
    #[serde(default)]
    pub scope: Option<String>,
    /// RFC 8707 `resource`: the upstream's resource identifier (usually its URL).
    #[serde(default)]
    pub resource: Option<String>,
    /// `audience`, for authorization servers that expect it instead of `resource`.
    #[serde(default)]
    pub audience: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: OAuthAuthMethod,
    /// `client_credentials` (default: the gateway's own token), or `token_exchange` (RFC 8693:
    /// each client's validated JWT is exchanged for a token meant for this upstream; needs
    /// `[auth.jwt]`).
    #[serde(default)]
    pub grant: OAuthGrant,
    /// Refresh a token this long before it expires (at most half its lifetime).
    #[serde(default = "default_refresh_before")]
    pub refresh_before: Dur,
    /// Bound on one request to the token endpoint.
    #[serde(default = "default_token_timeout")]
    pub timeout: Dur,
}

/// The grant an upstream's token is fetched with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// The gateway's own token (client credentials).
    #[default]
    ClientCredentials,
    /// Each client's token exchanged for one meant for the upstream (RFC 8693).
    TokenExchange,
}

/// Why an upstream's spec cannot be built: the field (relative to the upstream) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// `""` for the upstream as a whole, else e.g. `bearer_env`, `oauth.client_secret_env`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn upstream_error(field: &str, message: impl Into<String>) -> UpstreamError {
    UpstreamError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// A secret from an environment variable (`field` names the setting in errors).
fn env_secret(var: &str, field: &str) -> Result<String, UpstreamError> {
    let v = std::env::var(var).map_err(|_| {
        upstream_error(
            field,
            format!("environment variable `{var}` ({field}) is not set"),
        )
    })?;
    let v = v.trim();
    if v.is_empty() {
        return Err(upstream_error(
            field,
            format!("environment variable `{var}` ({field}) is empty"),
        ));
    }
    Ok(v.to_string())
}

impl OAuthConfig {
    /// The client, with its secret read from the environment or the file.
    pub fn client(&self) -> Result<OAuthClient, UpstreamError> {
        let secret = match (&self.client_secret_env, &self.client_secret_file) {
            (Some(var), None) => env_secret(var, "oauth.client_secret_env")?,
            (None, Some(path)) => {
                let field = "oauth.client_secret_file";
                let text = std::fs::read_to_string(path).map_err(|e| {
                    upstream_error(field, format!("cannot read `{}`: {e}", path.display()))
                })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(upstream_error(
                        field,
                        format!("`{}` is empty", path.display()),
                    ));
                }
                text.to_string()
            }
            (Some(_), Some(_)) => {
                return Err(upstream_error(
                    "oauth",
                    "give either `client_secret_env` or `client_secret_file`, not both",
                ));
            }
            (None, None) => {
                return Err(upstream_error(
                    "oauth",
                    "the client secret is missing: give `client_secret_env` (a variable name) or `client_secret_file`",
                ));
            }
        };
        Ok(OAuthClient {
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            client_secret: secret,
            scope: self.scope.clone().filter(|s| !s.trim().is_empty()),
            resource: self.resource.clone(),
            audience: self.audience.clone(),
            auth_method: match self.auth_method {
                OAuthAuthMethod::ClientSecretBasic => AuthMethod::ClientSecretBasic,
                OAuthAuthMethod::ClientSecretPost => AuthMethod::ClientSecretPost,
            },
            refresh_before: self.refresh_before.0,
            timeout: self.timeout.0,
            exchange: self.grant == OAuthGrant::TokenExchange,
            subject_token: None,
        })
    }
}

/// The HTTP transport of a `url` upstream.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum UrlTransport {
    /// Streamable HTTP (every era from 2025-03-26 on, including 2026-07-28).
    #[default]
    Streamable,
    /// The legacy HTTP+SSE transport (2024-11-05): `url` is the SSE endpoint.
    Sse,
    /// Detected when a session is created (Streamable HTTP, else HTTP+SSE).
    Auto,
}

impl UpstreamConfig {
    /// The upstream spec, with credentials resolved from the environment (and secret files).
    pub fn spec(&self) -> Result<UpstreamSpec, UpstreamError> {
        match (&self.url, &self.command) {
            (Some(url), None) => {
                let mut headers: Vec<(String, String)> = self
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (h, var) in &self.headers_env {
                    let field = format!("headers_env.{h}");
                    headers.push((h.clone(), env_secret(var, &field)?));
                }
                if let Some(var) = &self.bearer_env {
                    let token = env_secret(var, "bearer_env")?;
                    headers.push(("authorization".into(), format!("Bearer {token}")));
                }
                let credentials = match &self.oauth {
                    Some(o) => Some(Credentials::oauth(o.client()?)),
                    None => None,
                };
                let url = url.clone();
                Ok(match self.transport {
                    UrlTransport::Streamable => UpstreamSpec::Http {
                        url,
                        headers,
                        credentials,
                    },
                    UrlTransport::Sse if credentials.is_none() => {
                        UpstreamSpec::Sse { url, headers }
                    }
                    UrlTransport::Auto if credentials.is_none() => {
                        UpstreamSpec::Auto { url, headers }
                    }
                    _ => {
                        return Err(upstream_error(
                            "oauth",
                            "OAuth client credentials apply to Streamable HTTP upstreams (transport = \"streamable\")",
                        ));
                    }
                })
            }
            (None, Some(command)) => {
                let env = ChildEnv::Minimal {
                    passthrough: self.env_passthrough.clone(),
                    set: self
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                let (command, args) = (command.clone(), self.args.clone());
                Ok(match self.share {
                    0 => UpstreamSpec::Stdio { command, args, env },
                    k => UpstreamSpec::shared(command, args, env, k as usize),
                })
            }
            (Some(_), Some(_)) => Err(upstream_error(
                "",
                "give either `url` or `command`, not both",
            )),
            (None, None) => Err(upstream_error("", "give `url` (HTTP) or `command` (stdio)")),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7474))
}

/// `[admin]`: the admin listener (JSON API, live traffic, web page) on its own address.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve it (`false` keeps the section but binds nothing).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on; anything but loopback needs a token.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The bearer token every API request needs (prefer `token_env`).
    #[serde(default)]
    pub token: Option<String>,
    /// Read the token from this environment variable at start.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: default_admin_listen(),
            token: None,
            token_env: None,
        }
    }
}

impl AdminConfig {
    /// The token (from `token`, or the variable `token_env` names); `None` when neither is set.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_env) {
            (Some(_), Some(_)) => Err("give `token` or `token_env`, not both".into()),
            (Some(t), None) if t.trim().is_empty() => Err("`token` must not be empty".into()),
            (Some(t), None) => Ok(Some(t.trim().to_string())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
                Ok(_) => Err(format!("environment variable `{var}` (token_env) is empty")),
                Err(_) => Err(format!(
                    "environment variable `{var}` (token_env) is not set"
                )),
            },
            (None, None) => Ok(None),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `::1`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `IP` or `IP/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// The route key sessions are bound to: `""` for `/mcp`, `NAME` for `/servers/NAME/mcp`.
pub fn route_key(path: &str) -> Option<&str> {
    if path == "/mcp" {
        return Some("");
    }
    let name = path.strip_prefix("/servers/")?.strip_suffix("/mcp")?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then_some(name)
}

/// The algorithms a JWT may be signed with.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        match GatewayConfig::parse("g.toml", text).and_then(|c| c.validate("g.toml").map(|_| c)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn event_log_limits_have_defaults_and_are_validated() {
        let route = "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n";
        let c = GatewayConfig::parse("g.toml", route).expect("parse");
        assert_eq!(c.server.max_event_bytes, 8 * 1024 * 1024);
        assert_eq!(c.server.event_max_age.0, Duration::from_secs(600));
        assert_eq!(c.server.finished_stream_grace.0, Duration::from_secs(60));
        let c = GatewayConfig::parse(
            "g.toml",
            &format!(
                "[server]\nmax_event_bytes = 65536\nevent_max_age = \"2m\"\n\
                 finished_stream_grace = \"0s\"\n{route}"
            ),
        )
        .expect("parse");
        c.validate("g.toml").expect("valid");
        assert_eq!(c.server.max_event_bytes, 65536);
        assert_eq!(c.server.event_max_age.0, Duration::from_secs(120));
        assert!(c.server.finished_stream_grace.0.is_zero());
        let e = errors(&format!(
            "[server]\nmax_event_bytes = 100\nevent_max_age = \"0s\"\nmax_events = 0\n{route}"
        ));
        for want in [
            "g.toml: server.max_event_bytes: must be at least 1024 bytes",
            "g.toml: server.event_max_age: must be more than 0",
            "g.toml: server.max_events: must be at least 1",
        ] {
            assert!(e.lines().any(|l| l == want), "{want} in {e}");
        }
    }

    #[test]
    fn durations_and_cidrs() {
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert_eq!(Dur::parse("1.5").unwrap().0, Duration::from_millis(1500));
        assert!(Dur::parse("5 parsecs").is_err());
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert_eq!(route_key("/servers/a-b/mcp"), Some("a-b"));
        assert_eq!(route_key("/servers//mcp"), None);
        assert_eq!(
            Strategy::parse("least-in-flight"),
            Some(Strategy::LeastInFlight)
        );
        assert_eq!(
            Strategy::parse("weighted"),
            Some(Strategy::WeightedRoundRobin)
        );
    }

    #[test]
    fn type_errors_name_line_and_field() {
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\nweight = \"x\"\n",
        );
        assert!(e.starts_with("g.toml:5:"), "{e}");
        assert!(e.contains("routes[0].upstreams[0].weight"), "{e}");
        let e = errors("[server]\nlisten = \"127.0.0.1:1\"\nport = 3\n");
        assert!(
            e.contains("g.toml:3:1: server.port: unknown field `port`"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let e = errors(
            "[[routes]]\npath = \"/api\"\n[[routes.upstreams]]\nurl = \"ftp://x\"\nweight = 0\n\
             [[routes]]\npath = \"/servers/a/mcp\"\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert!(lines.contains(&"g.toml: routes[0].path: `/api` must be `/mcp` or `/servers/NAME/mcp` (NAME: letters, digits, `-`, `_`)"), "{e}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("g.toml: routes[0].upstreams[0].url: `ftp://x` must be")),
            "{e}"
        );
        assert!(
            lines.contains(&"g.toml: routes[0].upstreams[0].weight: 0 is not in 1..=1000"),
            "{e}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("g.toml: routes[1].upstreams: no upstreams")),
            "{e}"
        );
        let e = errors(
            "[auth]\n[[auth.api_keys]]\nname = \"a\"\nsha256 = \"secret\"\n\
             [[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\nbearer_env = \"SHADOWCAT_TEST_SURELY_UNSET\"\n",
        );
        assert!(
            e.contains("g.toml: auth.api_keys[0].sha256: must be 64 hex digits"),
            "{e}"
        );
        assert!(e.contains("g.toml: routes[0].upstreams[0].bearer_env: environment variable `SHADOWCAT_TEST_SURELY_UNSET` (bearer_env) is not set"), "{e}");
        let e = errors(
            "[server]\nworkers = 0\n[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n",
        );
        assert!(
            e.contains("g.toml: server.workers: 0 is not between 1 and 1024"),
            "{e}"
        );
    }

    #[test]
    fn connection_limits_are_read_and_validated() {
        let route = "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n";
        let cfg = GatewayConfig::parse(
            "g.toml",
            &format!(
                "[server]\nheader_timeout = \"2s\"\nbody_timeout = \"3s\"\n\
                 keep_alive_timeout = \"4s\"\nmax_connections = 5\n{route}"
            ),
        )
        .unwrap();
        cfg.validate("g.toml").unwrap();
        let l = cfg.server.conn_limits();
        assert_eq!(
            (
                l.header_timeout,
                l.body_timeout,
                l.idle_timeout,
                l.max_connections
            ),
            (
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4),
                5
            )
        );
        let d = GatewayConfig::default().server.conn_limits();
        assert_eq!(d, shadowcat_proxy::front::conn::ConnLimits::default());
        let e = errors(&format!(
            "[server]\nheader_timeout = \"0s\"\nbody_timeout = \"0s\"\n\
             keep_alive_timeout = \"0s\"\nmax_connections = 0\n{route}"
        ));
        for field in [
            "header_timeout",
            "body_timeout",
            "keep_alive_timeout",
            "max_connections",
        ] {
            assert!(
                e.contains(&format!("g.toml: server.{field}: must be")),
                "{e}"
            );
        }
        let e = errors(&format!(
            "[server]\nallowed_hosts = [\"mcp.example.com\", \"a.example:80\", \"*.example\"]\n{route}"
        ));
        assert!(
            e.contains("g.toml: server.allowed_hosts[1]: `a.example:80` has a port"),
            "{e}"
        );
        assert!(
            e.contains("g.toml: server.allowed_hosts[2]: `*.example` is not a host name"),
            "{e}"
        );
        assert!(!e.contains("allowed_hosts[0]"), "{e}");
    }

    #[test]
    fn store_specs_and_the_redis_prefix_are_validated() {
        let route = "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n";
        for ok in [
            "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000",
            "redis+sentinel://s1:26379,s2:26379/mymaster/2",
        ] {
            let text =
                format!("[server]\nstore = \"{ok}\"\n[limits]\nbackend = \"redis\"\n{route}");
            assert_eq!(errors(&text), "", "{ok}");
            let cfg = GatewayConfig::parse("g.toml", &text).unwrap();
            assert_eq!(cfg.limits.shared_redis(&cfg.server), Some(ok));
        }
        let e = errors(&format!(
            "[server]\nstore = \"redis+sentinel://:secret@s1:26379\"\nredis_prefix = \"{{app}}:\"\n\
             [limits]\nbackend = \"redis\"\nredis_url = \"redis+cluster://:secret@a:x\"\n{route}"
        ));
        for want in [
            "g.toml: server.store: session store error: redis: bad url `redis+sentinel://s1:26379`: name the primary",
            "g.toml: server.redis_prefix: `{app}:` contains `{` or `}`",
            "g.toml: limits.redis_url: session store error: redis: bad url `redis+cluster://a:x`: `x` is not a port",
        ] {
            assert!(
                e.lines().any(|l| l.starts_with(want)),
                "missing `{want}` in:\n{e}"
            );
        }
        assert!(!e.contains("secret"), "{e}");
        let e = errors(&format!(
            "[server]\nstore = \"postgres://u:secret@db\"\n{route}"
        ));
        assert!(
            e.contains(
                "g.toml: server.store: session store error: unknown store spec `postgres://db`"
            ),
            "{e}"
        );
    }

    #[test]
    fn upstream_credentials_and_shared_limits_are_validated() {
        let e = errors(
            "[limits]\nbackend = \"redis\"\nredis_timeout = \"0s\"\n\
             [[routes]]\npath = \"/mcp\"\n\
             [[routes.upstreams]]\nurl = \"http://a/mcp\"\nbearer_env = \"PATH\"\n\
             [routes.upstreams.oauth]\ntoken_url = \"http://auth.example.com/token\"\nclient_id = \"\"\n\
             resource = \"not a uri\"\n\
             [[routes.upstreams]]\nurl = \"http://b/mcp\"\n\
             [routes.upstreams.oauth]\ntoken_url = \"https://auth.example.com/token\"\nclient_id = \"gw\"\n\
             client_secret_env = \"SHADOWCAT_TEST_SURELY_UNSET\"\n\
             [[routes.upstreams]]\ncommand = \"srv\"\nheaders_env = { X-Key = \"PATH\" }\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "g.toml: limits.redis_timeout: must be more than 0",
            "g.toml: limits.backend: `redis` needs a Redis: set limits.redis_url, or use a Redis server.store (it is `memory`)",
            "g.toml: routes[0].upstreams[0].oauth: `bearer_env`, `oauth` all set `Authorization`; keep one",
            "g.toml: routes[0].upstreams[0].oauth.token_url: `http://auth.example.com/token` must be https:// (plain http:// only on loopback): the client secret is sent to it",
            "g.toml: routes[0].upstreams[0].oauth.client_id: must not be empty",
            "g.toml: routes[0].upstreams[0].oauth: the client secret is missing: give `client_secret_env` (a variable name) or `client_secret_file`",
            "g.toml: routes[0].upstreams[1].oauth.client_secret_env: environment variable `SHADOWCAT_TEST_SURELY_UNSET` (oauth.client_secret_env) is not set",
            "g.toml: routes[0].upstreams[2]: `headers`, `headers_env`, `bearer_env` and `oauth` apply to HTTP upstreams (`url`); a stdio server takes credentials from its environment",
        ] {
            assert!(lines.contains(&want), "missing `{want}` in:\n{e}");
        }
        assert!(
            lines.iter().any(|l| l.starts_with(
                "g.toml: routes[0].upstreams[0].oauth.resource: `not a uri` is not an absolute URI"
            )),
            "{e}"
        );
        let e = errors(
            "[limits]\nbackend = \"sideways\"\n[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n",
        );
        assert!(e.starts_with("g.toml:2:"), "{e}");
        assert!(
            e.contains("limits.backend: unknown variant `sideways`"),
            "{e}"
        );
        // A Redis store is the default Redis of the shared limiter; a secret file works.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[server]\nstore = \"redis://127.0.0.1:1\"\n[limits]\nbackend = \"redis\"\n\
             [[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n\
             [routes.upstreams.oauth]\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"gw\"\n\
             client_secret_file = \"{}\"\nauth_method = \"client_secret_post\"\n",
            secret.display()
        );
        assert_eq!(errors(&text), "");
        let cfg = GatewayConfig::parse("g.toml", &text).unwrap();
        assert_eq!(
            cfg.limits.shared_redis(&cfg.server),
            Some("redis://127.0.0.1:1")
        );
        let client = cfg.routes[0].upstreams[0]
            .oauth
            .as_ref()
            .unwrap()
            .client()
            .unwrap();
        assert_eq!(client.client_secret, "s3cret");
        assert_eq!(client.auth_method, AuthMethod::ClientSecretPost);
    }

    #[test]
    fn auth_needs_a_public_url_and_a_jwks_over_tls() {
        let cfg = |server: &str, jwks: &str| {
            errors(&format!(
                "[server]\n{server}\n[auth]\n[auth.jwt]\nissuer = \"https://as\"\naudience = [\"a\"]\n\
                 jwks_url = \"{jwks}\"\n[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n"
            ))
        };
        let public = "public_url = \"https://mcp.example.com\"";
        let e = cfg("", "https://as/jwks");
        assert_eq!(
            e,
            "g.toml: server.public_url: is required with [auth]: the RFC 9728 metadata and the \
             `WWW-Authenticate` challenges name this gateway by it (e.g. https://mcp.example.com); \
             it is never guessed from the request's `Host`"
        );
        let e = cfg(public, "http://as.example.com/jwks");
        assert_eq!(
            e,
            "g.toml: auth.jwt.jwks_url: `http://as.example.com/jwks` must be https:// (plain \
             http:// only on loopback): the keys that sign tokens come from it"
        );
        for ok in [
            "https://as.example.com/jwks",
            "http://127.0.0.1:9/jwks",
            "http://localhost:9/jwks",
            "http://[::1]:9/jwks",
        ] {
            assert_eq!(cfg(public, ok), "", "{ok}");
        }
        // Without [auth] nothing names the gateway: no public_url needed.
        assert_eq!(
            errors("[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n"),
            ""
        );
    }

    #[test]
    fn child_environment_and_metrics_token_settings() {
        let route = |u: &str| format!("[[routes]]\npath = \"/mcp\"\n{u}");
        let ok = route(
            "[[routes.upstreams]]\ncommand = \"sh\"\nargs = [\"a\"]\nenv = { MODE = \"x\" }\nenv_passthrough = [\"HOME\"]\n\
             [[routes.upstreams]]\ncommand = \"sh\"\nargs = [\"b\"]\n",
        );
        assert_eq!(errors(&ok), "");
        let e = errors(&route(
            "[[routes.upstreams]]\nurl = \"http://a/mcp\"\nenv_passthrough = [\"HOME\"]\n\
             [[routes.upstreams]]\ncommand = \"sh\"\nenv = { \"A=B\" = \"x\" }\nenv_passthrough = [\"\"]\n\
             [[routes.upstreams]]\ncommand = \"sh\"\n\
             [metrics]\ntoken_env = \"SHADOWCAT_TEST_SURELY_UNSET\"\n",
        ));
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "g.toml: routes[0].upstreams[0]: `env` and `env_passthrough` apply to stdio upstreams (`command`): they set the child's environment",
            "g.toml: routes[0].upstreams[1].env.A=B: `A=B` is not an environment variable name (not empty, no `=`)",
            "g.toml: routes[0].upstreams[1].env_passthrough[0]: `` is not an environment variable name (not empty, no `=`)",
            "g.toml: routes[0].upstreams[2]: `sh` is listed twice in this route",
            "g.toml: metrics.token_env: environment variable `SHADOWCAT_TEST_SURELY_UNSET` (token_env) is not set",
        ] {
            assert!(lines.contains(&want), "missing `{want}` in:\n{e}");
        }
        assert_eq!(lines.len(), 5, "{e}");
    }

    #[test]
    fn health_check_kinds() {
        let base = "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n";
        let with = |h: &str| errors(&format!("{base}[routes.health]\n{h}"));
        let kind = |h: &str| {
            let c = GatewayConfig::parse("g.toml", &format!("{base}[routes.health]\n{h}")).unwrap();
            c.routes[0].health.as_ref().unwrap().kind()
        };
        assert_eq!(kind(""), HealthCheck::Tcp);
        assert_eq!(kind("http_path = \"/h\"\n"), HealthCheck::Http);
        assert_eq!(kind("check = \"ping\"\n"), HealthCheck::Ping);
        assert_eq!(with("check = \"ping\"\n"), "");
        let e = with("check = \"http\"\n");
        assert!(
            e.contains(
                "g.toml: routes[0].health.http_path: check = \"http\" needs the path to GET"
            ),
            "{e}"
        );
        let e = with("check = \"ping\"\nhttp_path = \"/h\"\n");
        assert!(
            e.contains("routes[0].health.http_path: is only used by check = \"http\", not by check = \"ping\""),
            "{e}"
        );
        let e = with("check = \"icmp\"\n");
        assert!(
            e.contains("routes[0].health.check") && e.contains("icmp"),
            "{e}"
        );
    }

    #[test]
    fn spares_are_for_stdio_upstreams() {
        let up = |u: &str| {
            errors(&format!(
                "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\n{u}"
            ))
        };
        assert_eq!(up("command = \"srv\"\nspares = 4\n"), "");
        let e = up("url = \"http://a/mcp\"\nspares = 1\n");
        assert!(e.contains("g.toml: routes[0].upstreams[0].spares: spares are children kept ahead of need: only for stdio upstreams (`command`)"), "{e}");
        let e = up("command = \"srv\"\nspares = 65\n");
        assert!(
            e.contains("routes[0].upstreams[0].spares: 65 is too many (at most 64)"),
            "{e}"
        );
    }

    #[test]
    fn shared_children_are_for_stdio_upstreams_without_spares() {
        let up = |u: &str| {
            errors(&format!(
                "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\n{u}"
            ))
        };
        assert_eq!(up("command = \"srv\"\nshare = 2\n"), "");
        let cfg = GatewayConfig::parse(
            "g.toml",
            "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\ncommand = \"srv\"\nargs = [\"--x\"]\nshare = 3\n",
        )
        .expect("parse");
        match cfg.routes[0].upstreams[0].spec().expect("spec") {
            UpstreamSpec::Shared(p) => {
                assert_eq!(p.0.share(), 3);
                assert_eq!(p.0.command(), ("srv", &["--x".to_string()][..]));
            }
            other => panic!("{other:?}"),
        }
        let e = up("url = \"http://a/mcp\"\nshare = 1\n");
        assert!(
            e.contains(
                "routes[0].upstreams[0].share: shared children are for stdio upstreams (`command`)"
            ),
            "{e}"
        );
        let e = up("command = \"srv\"\nshare = 2\nspares = 2\n");
        assert!(
            e.contains("routes[0].upstreams[0].spares: does not go with `share`"),
            "{e}"
        );
        let e = up("command = \"srv\"\nshare = 65\n");
        assert!(
            e.contains("routes[0].upstreams[0].share: 65 is too many (at most 64)"),
            "{e}"
        );
        // The same command twice is still caught when shared.
        let e = up(
            "command = \"srv\"\nshare = 1\n[[routes.upstreams]]\ncommand = \"srv\"\nshare = 2\n",
        );
        assert!(e.contains("`srv` is listed twice in this route"), "{e}");
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[[routes.servers]]\nname = \"a\"\ncommand = \"x\"\nshare = 1\n",
        );
        assert!(
            e.contains(
                "routes[0].servers[0].share: is not supported on a composite route's servers"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_composite_routes_servers_may_have_their_own_pinning() {
        let route = |pinning: &str, servers: &str| {
            format!(
                "[[routes]]\npath = \"/mcp\"\n{pinning}\n\
                 [[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n{servers}\n\
                 [[routes.servers]]\nname = \"b\"\ncommand = \"y\"\n"
            )
        };
        assert_eq!(
            errors(&route("pinning = \"enforce\"", "pinning = \"off\"")),
            ""
        );
        assert_eq!(
            errors(&route("", "pinning = \"warn\"\nnew_tools = \"hold\"")),
            ""
        );
        let e = errors(&route("", "pinning = \"strict\""));
        assert!(e.contains("pinning") && e.contains("strict"), "{e}");
        // A member's `new_tools` with pinning off for it does nothing: refused.
        let e = errors(&route("", "new_tools = \"hold\""));
        assert!(
            e.contains("routes[0].servers[0].new_tools: does nothing with pinning off"),
            "{e}"
        );
        let e = errors(&route(
            "pinning = \"warn\"",
            "pinning = \"off\"\nnew_tools = \"hold\"",
        ));
        assert!(e.contains("routes[0].servers[0].new_tools"), "{e}");
        let cfg = GatewayConfig::parse("g.toml", &route("", "pinning = \"warn\"")).unwrap();
        assert!(cfg.routes[0].pinning_on());
        let cfg = GatewayConfig::parse("g.toml", &route("", "pinning = \"off\"")).unwrap();
        assert!(!cfg.routes[0].pinning_on());
    }

    #[test]
    fn admin_section() {
        let base = "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\nurl = \"http://a/mcp\"\n";
        let with = |admin: &str| errors(&format!("{base}[admin]\n{admin}"));
        assert_eq!(with(""), "");
        let cfg = GatewayConfig::parse("g.toml", &format!("{base}[admin]\n")).unwrap();
        let admin = cfg.admin.unwrap();
        assert!(admin.enabled);
        assert_eq!(admin.listen, "127.0.0.1:7474".parse().unwrap());
        let e = with("listen = \"0.0.0.0:9090\"\n");
        assert!(
            e.contains("g.toml: admin.listen: `0.0.0.0:9090` is not a loopback address"),
            "{e}"
        );
        assert_eq!(with("listen = \"0.0.0.0:9090\"\ntoken = \"t\"\n"), "");
        assert_eq!(with("enabled = false\nlisten = \"0.0.0.0:9090\"\n"), "");
        let e = with("token = \"a\"\ntoken_env = \"B\"\n");
        assert!(
            e.contains("g.toml: admin: give `token` or `token_env`, not both"),
            "{e}"
        );
        let e = with("token_env = \"SHADOWCAT_TEST_SURELY_UNSET\"\n");
        assert!(e.contains("g.toml: admin.token_env: environment variable `SHADOWCAT_TEST_SURELY_UNSET` (token_env) is not set"), "{e}");
        let e = with("token = \" \"\n");
        assert!(
            e.contains("g.toml: admin.token: `token` must not be empty"),
            "{e}"
        );
        let e = with("port = 1\n");
        assert!(e.contains("admin.port: unknown field `port`"), "{e}");
        let e = errors(&format!(
            "[server]\nlisten = \"127.0.0.1:7474\"\n{base}[admin]\n"
        ));
        assert!(
            e.contains("g.toml: admin.listen: `127.0.0.1:7474` is also server.listen"),
            "{e}"
        );
    }

    const COMPOSITE: &str = r#"
[[routes]]
path = "/mcp"
failure = "closed"
page_size = 50
[routes.names]
separator = "--"
max_len = 40
prefix = "on_conflict"
[[routes.servers]]
name = "github"
url = "https://api.example.com/mcp"
headers = { "x-team" = "core" }
[[routes.servers]]
name = "files"
command = "mcp-files"
args = ["--root", "/srv"]
env = { LOG = "info" }
"#;

    #[test]
    fn a_composite_route_parses_into_one_composite_spec() {
        let cfg = GatewayConfig::parse("g.toml", COMPOSITE).expect("parse");
        cfg.validate("g.toml").expect("valid");
        let r = &cfg.routes[0];
        assert!(r.is_composite());
        let spec = r.composite().expect("composite").expect("spec");
        assert_eq!(spec.failure, Failure::Closed);
        assert_eq!(spec.page_size, 50);
        assert_eq!(
            spec.names,
            NameRules {
                separator: "--".into(),
                max_len: 40,
                mode: PrefixMode::OnConflict
            }
        );
        let names: Vec<&str> = spec.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["github", "files"]);
        match &spec.members[0].spec {
            UpstreamSpec::Http { url, headers, .. } => {
                assert_eq!(url, "https://api.example.com/mcp");
                assert_eq!(headers, &[("x-team".to_string(), "core".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        match &spec.members[1].spec {
            UpstreamSpec::Stdio { command, args, env } => {
                assert_eq!(command, "mcp-files");
                assert_eq!(args, &["--root", "/srv"]);
                // The gateway's children start from a minimal environment, members too.
                assert!(
                    matches!(env, ChildEnv::Minimal { set, .. } if set == &[("LOG".to_string(), "info".to_string())])
                );
            }
            other => panic!("{other:?}"),
        }
        // The defaults.
        let cfg = GatewayConfig::parse(
            "g.toml",
            "[[routes]]\npath = \"/mcp\"\n[[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n",
        )
        .expect("parse");
        let spec = cfg.routes[0].composite().expect("composite").expect("spec");
        assert_eq!(spec.names, NameRules::default());
        assert_eq!((spec.failure, spec.page_size), (Failure::Open, 0));
        // An upstream set is not composite.
        let cfg = GatewayConfig::parse(
            "g.toml",
            "[[routes]]\npath = \"/mcp\"\n[[routes.upstreams]]\ncommand = \"x\"\n",
        )
        .expect("parse");
        assert!(cfg.routes[0].composite().is_none());
    }

    #[test]
    fn a_composite_route_with_upstreams_too_is_refused() {
        let e = errors(&format!(
            "{COMPOSITE}[[routes.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\n"
        ));
        assert!(
            e.contains("g.toml: routes[0]: give either `upstreams` (an upstream set"),
            "{e}"
        );
    }

    #[test]
    fn bad_and_duplicate_server_names_are_refused_with_their_path() {
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n\
             [[routes.servers]]\nname = \"ok\"\ncommand = \"a\"\n\
             [[routes.servers]]\nname = \"bad_name\"\ncommand = \"b\"\n\
             [[routes.servers]]\nname = \"ok\"\ncommand = \"c\"\n\
             [[routes.servers]]\nname = \"\"\ncommand = \"d\"\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines.contains(
                &"g.toml: routes[0].servers[1].name: server name `bad_name` may only contain lowercase letters, digits and `-`"
            ),
            "{e}"
        );
        assert!(
            lines.contains(
                &"g.toml: routes[0].servers[2].name: `ok` is used by another server of this route"
            ),
            "{e}"
        );
        assert!(
            lines.contains(&"g.toml: routes[0].servers[3].name: server name is empty"),
            "{e}"
        );
        assert_eq!(lines.len(), 3, "{e}");
    }

    #[test]
    fn servers_are_checked_as_upstreams_and_refuse_weight_spares_and_unknown_fields() {
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n\
             [[routes.servers]]\nname = \"a\"\nurl = \"ftp://x/mcp\"\nweight = 2\n\
             [[routes.servers]]\nname = \"b\"\ncommand = \"x\"\nspares = 1\n",
        );
        assert!(
            e.contains(
                "g.toml: routes[0].servers[0].url: `ftp://x/mcp` must be an http:// or https:// URL"
            ),
            "{e}"
        );
        assert!(
            e.contains("g.toml: routes[0].servers[0].weight: is not supported on a composite route's servers"),
            "{e}"
        );
        assert!(
            e.contains("g.toml: routes[0].servers[1].spares: is not supported on a composite route's servers"),
            "{e}"
        );
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[[routes.servers]]\nname = \"a\"\ncommand = \"x\"\ncomand = \"y\"\n",
        );
        assert!(e.contains("unknown field `comand`"), "{e}");
        assert!(e.contains("routes[0].servers[0]"), "{e}");
    }

    #[test]
    fn bad_separator_and_max_len_are_refused() {
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[routes.names]\nseparator = \"::\"\nmax_len = 65\n\
             [[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n",
        );
        assert!(
            e.contains("g.toml: routes[0].names.separator: name separator `::` is invalid"),
            "{e}"
        );
        assert!(
            e.contains("g.toml: routes[0].names.max_len: 65 is not between 1 and 64"),
            "{e}"
        );
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[routes.names]\nseparator = \"\"\nmax_len = 0\n\
             [[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n",
        );
        assert!(
            e.contains("routes[0].names.separator: name separator is empty"),
            "{e}"
        );
        assert!(
            e.contains("routes[0].names.max_len: 0 is not between"),
            "{e}"
        );
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[routes.names]\nprefix = \"sometimes\"\n\
             [[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n",
        );
        assert!(e.contains("routes[0].names.prefix"), "{e}");
    }

    /// A composite route's server with an upstream set: parsed into a spec whose member is
    /// named by its first upstream; each problem of the set named by its field path.
    #[test]
    fn a_servers_upstream_set_is_parsed_and_its_problems_are_named() {
        let good = "[[routes]]\npath = \"/mcp\"\n[routes.health]\ninterval = \"5s\"\n\
             [[routes.servers]]\nname = \"a\"\nbalance = \"random\"\n\
             [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\n\
             [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:2/mcp\"\nweight = 3\n\
             [[routes.servers]]\nname = \"b\"\ncommand = \"x\"\n";
        assert_eq!(errors(good), "");
        let cfg = GatewayConfig::parse("g.toml", good).expect("parse");
        let r = &cfg.routes[0];
        assert!(r.servers[0].has_set() && !r.servers[1].has_set());
        assert_eq!(r.servers[0].upstreams[1].weight, 3);
        assert_eq!(r.servers[0].balance, Some(Strategy::Random));
        let spec = r.composite().expect("composite").expect("spec");
        assert_eq!(spec.members[0].spec.describe(), "http://127.0.0.1:1/mcp");

        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n\
             [[routes.servers]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n\
             [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\nspares = 1\n\
             [[routes.servers.upstreams]]\nurl = \"ftp://x\"\n\
             [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\n\
             [[routes.servers]]\nname = \"b\"\ncommand = \"x\"\nbalance = \"random\"\n\
             [[routes.servers]]\nname = \"c\"\nbalance = \"least-in-flight\"\n\
             [[routes.servers.upstreams]]\ncommand = \"x\"\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "g.toml: routes[0].servers[0].url: give a server either one upstream",
            "g.toml: routes[0].servers[0].upstreams[0].spares: is not supported on a composite route's servers",
            "g.toml: routes[0].servers[0].upstreams[1].url: `ftp://x` must be",
            "g.toml: routes[0].servers[0].upstreams[2]: `http://127.0.0.1:1/mcp` is listed twice",
            "g.toml: routes[0].servers[1].balance: balances a server's upstream set",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "{want} in\n{e}");
        }
        // Legs count on the upstreams they run on, so least-in-flight balances a server's set.
        assert!(!e.contains("routes[0].servers[2]"), "{e}");
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[[routes.servers]]\nname = \"a\"\n\
             [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\n\
             bearer_env = \"SHADOWCAT_TEST_SURELY_UNSET\"\n",
        );
        assert!(
            e.contains("g.toml: routes[0].servers[0].upstreams[0].bearer_env: environment variable `SHADOWCAT_TEST_SURELY_UNSET`"),
            "{e}"
        );
    }

    #[test]
    fn balance_on_a_composite_route_and_composite_options_on_a_set_are_refused() {
        // Health checks of a composite route check each server's upstreams (a server with one
        // upstream is a set of one).
        assert_eq!(
            errors(&format!("{COMPOSITE}[routes.health]\ninterval = \"5s\"\n")),
            ""
        );
        let e = errors(&COMPOSITE.replace(
            "failure = \"closed\"",
            "failure = \"closed\"\nbalance = \"random\"",
        ));
        assert!(
            e.contains("g.toml: routes[0].balance: does not apply to a composite route"),
            "{e}"
        );
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\nfailure = \"open\"\npage_size = 10\n[routes.names]\n\
             [[routes.upstreams]]\nurl = \"http://127.0.0.1:1/mcp\"\n",
        );
        for field in ["names", "failure", "page_size"] {
            assert!(
                e.contains(&format!(
                    "g.toml: routes[0].{field}: applies to composite routes ([[routes.servers]])"
                )),
                "{e}"
            );
        }
    }

    /// A composite server's own failover, ejection, probe timeout, health checks, breaker,
    /// retries and timeouts: each one it sets is its own, the route's is used for the rest (the
    /// breaker, retry and health sections field by field), on a server with one upstream as on
    /// one with a set; problems are named at the server's field, and one it inherits from the
    /// route is reported at the route only.
    #[test]
    fn a_servers_own_resilience_settings_override_the_routes() {
        let text = "[[routes]]\npath = \"/mcp\"\nrequest_timeout = \"30s\"\nfailover = false\n\
             [routes.breaker]\nconsecutive_failures = 7\nopen_for = \"10s\"\n\
             [routes.health]\ninterval = \"3s\"\nhttp_path = \"/healthz\"\n\
             [[routes.servers]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/mcp\"\n\
             request_timeout = \"200ms\"\nsse_idle_timeout = \"0\"\nfailover = true\n\
             eject_for = \"5s\"\nconnect_timeout = \"250ms\"\n\
             [routes.servers.breaker]\nconsecutive_failures = 2\n\
             [routes.servers.retry]\nattempts = 0\n\
             [routes.servers.health]\ncheck = \"ping\"\nunhealthy_threshold = 1\n\
             [[routes.servers]]\nname = \"b\"\n\
             [routes.servers.health]\nenabled = false\n\
             [[routes.servers.upstreams]]\nurl = \"http://127.0.0.1:2/mcp\"\n\
             [[routes.servers]]\nname = \"c\"\ncommand = \"x\"\n";
        assert_eq!(errors(text), "");
        let cfg = GatewayConfig::parse("g.toml", text).expect("parse");
        let r = &cfg.routes[0];
        let a = r.server_resilience(&r.servers[0]);
        assert_eq!(a.request_timeout.0, Duration::from_millis(200));
        assert_eq!(a.sse_idle_timeout.0, Duration::ZERO);
        assert!(a.failover);
        assert_eq!(a.eject_for.0, Duration::from_secs(5));
        assert_eq!(a.connect_timeout.0, Duration::from_millis(250));
        assert_eq!(a.breaker.consecutive_failures, 2);
        assert_eq!(a.breaker.open_for.0, Duration::from_secs(10), "the route's");
        assert_eq!(a.retry.attempts, 0);
        let h = a.health.expect("checked");
        assert_eq!(h.kind(), HealthCheck::Ping);
        assert_eq!(h.http_path, None, "`check` and `http_path` go together");
        assert_eq!(
            (h.interval.0, h.unhealthy_threshold),
            (Duration::from_secs(3), 1)
        );
        let b = r.server_resilience(&r.servers[1]);
        assert!(b.health.is_none(), "turned off");
        assert!(!b.failover, "the route's");
        let c = r.server_resilience(&r.servers[2]);
        assert_eq!(c.request_timeout.0, Duration::from_secs(30));
        assert_eq!(c.breaker.consecutive_failures, 7);
        assert_eq!(c.health.expect("the route's").kind(), HealthCheck::Http);

        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[routes.retry]\nbackoff = \"10s\"\n\
             [[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n\
             [[routes.servers]]\nname = \"b\"\ncommand = \"y\"\nconnect_timeout = \"0\"\n\
             [routes.servers.breaker]\nfailure_rate = 2.0\n\
             [routes.servers.retry]\nattempts = 11\n\
             [routes.servers.health]\ncheck = \"http\"\n",
        );
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "g.toml: routes[0].retry.backoff: is larger than retry.backoff_max",
            "g.toml: routes[0].servers[1].connect_timeout: must be more than 0",
            "g.toml: routes[0].servers[1].breaker.failure_rate: 2 is not a share between 0 and 1",
            "g.toml: routes[0].servers[1].retry.attempts: 11 is too many",
            "g.toml: routes[0].servers[1].health.http_path: check = \"http\" needs the path",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "{want} in\n{e}");
        }
        assert!(
            !e.contains("servers[0]") && !e.contains("servers[1].retry.backoff"),
            "inherited problems are the route's: {e}"
        );
        let e = errors(
            "[[routes]]\npath = \"/mcp\"\n[[routes.servers]]\nname = \"a\"\ncommand = \"x\"\n\
             [routes.servers.breaker]\nfailures = 2\n",
        );
        assert!(
            e.contains("routes[0].servers[0]") && e.contains("failures"),
            "{e}"
        );
    }

    #[test]
    fn the_composite_example_is_valid() {
        let text = include_str!("../../../examples/composite.toml");
        let cfg = GatewayConfig::parse("composite.toml", text).expect("parse");
        cfg.validate("composite.toml").expect("valid");
        assert!(cfg.routes.iter().any(RouteConfig::is_composite));
    }

    /// A file with several mistakes gets all of them in one run, in file order, each with its
    /// line and field, misspellings with the name they are closest to.
    #[test]
    fn every_problem_of_a_file_is_reported_with_did_you_mean() {
        let text = "[server]\nmax_sesions = 10\n\n[[routes]]\npath = \"/mcp\"\n\
                    balance = \"least-inflight\"\n[[routes.upstreams]]\n\
                    url = \"http://127.0.0.1:9/mcp\"\nwieght = 2\n";
        let e = GatewayConfig::parse("g.toml", text)
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].starts_with("g.toml:2:1: server.max_sesions: unknown field"),
            "{e}"
        );
        assert!(lines[0].ends_with("did you mean `max_sessions`?"), "{e}");
        assert!(
            lines[1].starts_with("g.toml:6:11: routes[0].balance"),
            "{e}"
        );
        assert!(lines[1].ends_with("did you mean `least-in-flight`?"), "{e}");
        assert!(lines[2].contains("routes[0].upstreams[0].wieght"), "{e}");
        assert!(lines[2].ends_with("did you mean `weight`?"), "{e}");
        // Broken TOML too: each syntax error on its line, and what follows is still read.
        let text = "[server]\nlisten = \"127.0.0.1:8080\nmax_sessions = = 3\n[[routes]]\n\
                    path = \"/mcp\"\nbalance = \"randm\"\n";
        let e = GatewayConfig::parse("g.toml", text)
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert!(lines[0].starts_with("g.toml:2:"), "{e}");
        assert!(lines[1].starts_with("g.toml:3:"), "{e}");
        assert!(lines[2].contains("did you mean `random`?"), "{e}");
        // Far from every name: no suggestion.
        let e = GatewayConfig::parse("g.toml", "[server]\nzzzzzzzz = 1\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    /// Every example file is a valid configuration as shipped.
    #[test]
    fn every_example_is_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("examples/") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let name = path.display().to_string();
            let cfg = GatewayConfig::parse(&name, &text).unwrap_or_else(|e| panic!("{e}"));
            cfg.validate(&name).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert!(seen >= 3, "examples/*.toml: {seen}");
    }

    /// Property tests: no text makes loading panic. proptest's default of 256 cases each
    /// (PROPTEST_CASES=N for a deeper run).
    mod props {
        use super::GatewayConfig;
        use proptest::prelude::*;

        const EXAMPLE: &str = include_str!("../../../examples/gateway.toml");

        /// Values that probe the edges of every field type.
        const VALUES: &[&str] = &[
            "0",
            "-1",
            "1",
            "65536",
            "9223372036854775807",
            "18446744073709551616",
            "1e999",
            "-0.0",
            "nan",
            "inf",
            "true",
            "[]",
            "{}",
            "[1, \"a\"]",
            "{ a = 1 }",
            "\"\"",
            "\" \"",
            "\"é\"",
            "\"\\u0000\"",
            "\"0\"",
            "\"1.5\"",
            "\"999999999999999h\"",
            "\"-1s\"",
            "\"1x\"",
            "\"ms\"",
            "\".\"",
            "\"::/200\"",
            "\"10.0.0.0/33\"",
            "\"/\"",
            "\"/mcp\"",
            "\"/servers//mcp\"",
            "\"http://\"",
            "\"http://[::1\"",
            "\"redis://\"",
            "\"sqlite:\"",
            "\"127.0.0.1:0\"",
            "\"0.0.0.0:1\"",
            "\"[::]:1\"",
            "\"=\"",
            "\"A=B\"",
            "\"RS256\"",
            "\"none\"",
            "\"*\"",
            "1979-05-27T07:32:00Z",
            "'''x\n'''",
            "\"\"\"\n\"\"\"",
        ];

        /// TOML-ish tokens for text that is not based on the example.
        const TOKENS: &[&str] = &[
            "[server]\n",
            "[admin]\n",
            "[auth]\n",
            "[auth.jwt]\n",
            "[[auth.api_keys]]\n",
            "[limits]\n",
            "[limits.per_tool]\n",
            "[[routes]]\n",
            "[routes.health]\n",
            "[[routes.upstreams]]\n",
            "[routes.upstreams.oauth]\n",
            "[[routes.rules]]\n",
            "path",
            "url",
            "command",
            "listen",
            "store",
            "token",
            "token_env",
            "max_sessions",
            "idle_timeout",
            "trusted_proxies",
            "weight",
            "balance",
            "rate",
            "burst",
            "scopes",
            " = ",
            "=",
            "\n",
            "[",
            "]",
            "[[",
            "]]",
            "{",
            "}",
            ",",
            ".",
            "\"",
            "'",
            "#",
            "é",
            "\u{feff}",
            "\r",
            "\t",
            "\\",
        ];

        #[derive(Debug, Clone)]
        enum Edit {
            /// Drop the line.
            Delete(prop::sample::Index),
            /// Repeat the line.
            Duplicate(prop::sample::Index),
            /// Replace what follows the line's `=` with a value.
            Value(prop::sample::Index, &'static str),
            /// Insert a token at a character of the line.
            Insert(prop::sample::Index, prop::sample::Index, &'static str),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            let i = any::<prop::sample::Index>;
            prop_oneof![
                i().prop_map(Edit::Delete),
                i().prop_map(Edit::Duplicate),
                (i(), prop::sample::select(VALUES)).prop_map(|(l, v)| Edit::Value(l, v)),
                (i(), i(), prop::sample::select(TOKENS))
                    .prop_map(|(l, c, t)| Edit::Insert(l, c, t)),
            ]
        }

        /// The example configuration with a few edits, cut short sometimes.
        fn mutated_example() -> impl Strategy<Value = String> {
            (
                prop::collection::vec(edit(), 1..8),
                prop::option::of(any::<prop::sample::Index>()),
            )
                .prop_map(|(edits, cut)| {
                    let mut lines: Vec<String> = EXAMPLE.lines().map(str::to_string).collect();
                    for e in edits {
                        if lines.is_empty() {
                            break;
                        }
                        match e {
                            Edit::Delete(l) => {
                                lines.remove(l.index(lines.len()));
                            }
                            Edit::Duplicate(l) => {
                                let n = l.index(lines.len());
                                lines.insert(n, lines[n].clone());
                            }
                            Edit::Value(l, v) => {
                                let n = l.index(lines.len());
                                if let Some(eq) = lines[n].find('=') {
                                    lines[n] = format!("{}= {v}", &lines[n][..eq]);
                                }
                            }
                            Edit::Insert(l, c, t) => {
                                let n = l.index(lines.len());
                                let chars: Vec<char> = lines[n].chars().collect();
                                let at = c.index(chars.len() + 1);
                                let mut s: String = chars[..at].iter().collect();
                                s.push_str(t);
                                s.extend(&chars[at..]);
                                lines[n] = s;
                            }
                        }
                    }
                    let text = lines.join("\n");
                    match cut {
                        Some(c) => text
                            .chars()
                            .take(c.index(text.chars().count() + 1))
                            .collect(),
                        None => text,
                    }
                })
        }

        fn tomlish() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => mutated_example(),
                2 => prop::collection::vec(
                    prop_oneof![prop::sample::select(TOKENS), prop::sample::select(VALUES)],
                    0..40
                )
                .prop_map(|t| t.concat()),
                1 => any::<String>(),
            ]
        }

        proptest! {
            /// Parsing then validating any text gives a configuration or errors (each naming
            /// the file), never a panic.
            #[test]
            fn loading_never_panics(text in tomlish()) {
                match GatewayConfig::parse("g.toml", &text) {
                    Ok(cfg) => {
                        if let Err(e) = cfg.validate("g.toml") {
                            prop_assert!(e.to_string().starts_with("g.toml"));
                        }
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("g.toml")),
                }
            }
        }

        #[test]
        fn the_example_is_valid() {
            let cfg = GatewayConfig::parse("g.toml", EXAMPLE).unwrap();
            cfg.validate("g.toml").unwrap();
        }
    }
}
