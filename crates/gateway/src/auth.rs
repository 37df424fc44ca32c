//! Authentication: the gateway as an OAuth 2.1 resource server (MCP authorization spec).
//!
//! * `Authorization: Bearer TOKEN` on every request (never in the query string).
//! * Static API keys: the SHA-256 of the presented token is looked up (keys are stored hashed).
//! * JWTs: `RS*`/`PS*`/`ES256`/`ES384`/`EdDSA` signatures checked against the issuer's JWKS
//!   (fetched, cached, refetched on an unknown `kid` at most every `jwks_min_refetch`); `iss`,
//!   `aud`, `exp` and `nbf` validated with leeway.
//! * Failures map to `401` + `WWW-Authenticate: Bearer resource_metadata="…", scope="…"`
//!   (RFC 9728 §5.1) and missing scopes to `403` + `error="insufficient_scope"`.
//!
//! The client's credentials stop here: upstream requests are built from the upstream's own
//! configuration, never from the client's headers.

use super::config::{AuthConfig, JwtConfig};
use http::{HeaderMap, header};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id: `key:NAME` for API keys, `jwt:SUBJECT` for tokens.
    pub id: Arc<str>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// The token's claims (empty for API keys), for authorization rules.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Principal {
    /// Whether every scope in `needed` is granted.
    pub fn has_scopes(&self, needed: &[String]) -> bool {
        needed.iter().all(|s| self.scopes.contains(s))
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("authentication required: send `Authorization: Bearer TOKEN`")]
    Missing,
    /// The credentials are not valid (unknown key, bad signature, wrong issuer or audience…).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token has expired.
    #[error("invalid token: the token has expired")]
    Expired,
    /// The token is valid but lacks scopes.
    #[error("insufficient scope: this endpoint needs scope(s) `{}`", .0.join(" "))]
    InsufficientScope(Vec<String>),
}

impl AuthError {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::InsufficientScope(_) => "insufficient_scope",
        }
    }
}

/// SHA-256 of a key, lowercase hex (the form stored in the configuration).
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks credentials.
pub struct Authenticator {
    keys: HashMap<String, Principal>,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// Build from validated configuration.
    pub fn new(cfg: &AuthConfig, http: reqwest::Client) -> Self {
        let keys = cfg
            .api_keys
            .iter()
            .map(|k| {
                let p = Principal {
                    id: Arc::from(format!("key:{}", k.name)),
                    scopes: k.scopes.clone(),
                    claims: Arc::default(),
                };
                (k.sha256.trim().to_ascii_lowercase(), p)
            })
            .collect();
        Authenticator {
            keys,
            jwt: cfg.jwt.clone().map(|c| JwtVerifier::new(c, http)),
        }
    }

    /// Fetch the JWKS once ahead of the first request (failure is logged, not fatal).
    pub async fn prefetch(&self) {
        if let Some(j) = &self.jwt
            && let Err(e) = j.refresh(false).await
        {
            tracing::warn!(error = %e, "could not fetch the JWKS at start; will retry on demand");
        }
    }

    /// Authenticate a request by its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer(headers)?;
        if let Some(p) = self.keys.get(&sha256_hex(token.as_bytes())) {
            return Ok(p.clone());
        }
        match &self.jwt {
            Some(j) if token.split('.').count() == 3 => j.verify(token).await,
            Some(_) => Err(AuthError::Invalid(
                "not a JWT and not a known API key".into(),
            )),
            None => Err(AuthError::Invalid("unknown API key".into())),
        }
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    let v = v
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid(format!(
            "use the Bearer scheme, not `{scheme}`"
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Invalid("the bearer token is empty".into()));
    }
    Ok(token)
}

struct Key {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct Jwks {
    by_kid: HashMap<String, Arc<Key>>,
    anonymous: Vec<Arc<Key>>,
    fetched: Option<Instant>,
}

/// Validates JWTs against a JWKS.
struct JwtVerifier {
    cfg: JwtConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    jwks: RwLock<Jwks>,
    /// Serialises fetches; holds the time of the last attempt.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(serde::Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

impl JwtVerifier {
    fn new(cfg: JwtConfig, http: reqwest::Client) -> Self {
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .collect();
        JwtVerifier {
            cfg,
            algorithms,
            http,
            jwks: RwLock::new(Jwks::default()),
            fetching: tokio::sync::Mutex::new(None),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Jwks> {
        shadowcat_proxy::sync::read(&self.jwks)
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let j = self.read();
        let fits = |k: &Arc<Key>| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => j.by_kid.get(kid).filter(|k| fits(k)).cloned(),
            None => {
                let all: Vec<&Arc<Key>> = j
                    .by_kid
                    .values()
                    .chain(j.anonymous.iter())
                    .filter(|k| fits(k))
                    .collect();
                (all.len() == 1).then(|| all[0].clone())
            }
        }
    }

    fn stale(&self) -> bool {
        self.read()
            .fetched
            .is_none_or(|t| t.elapsed() >= self.cfg.jwks_cache.0)
    }

    /// Fetch the JWKS. With `rate_limited`, skip when the last attempt was less than
    /// `jwks_min_refetch` ago. Concurrent callers wait for one fetch.
    async fn refresh(&self, rate_limited: bool) -> Result<(), String> {
        let asked = Instant::now();
        let mut last = self.fetching.lock().await;
        if let Some(t) = *last {
            if t >= asked {
                return Ok(()); // someone fetched while we waited
            }
            if rate_limited && t.elapsed() < self.cfg.jwks_min_refetch.0 {
                return Ok(());
            }
        }
        *last = Some(Instant::now());
        let fetched = self.fetch().await;
        match fetched {
            Ok(j) => {
                tracing::info!(
                    keys = j.by_kid.len() + j.anonymous.len(),
                    url = %self.cfg.jwks_url,
                    "fetched the JWKS"
                );
                *shadowcat_proxy::sync::write(&self.jwks) = j;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self) -> Result<Jwks, String> {
        // Named without userinfo or query values in errors and logs.
        let shown = shadowcat_tape::redact::url_label(&self.cfg.jwks_url);
        let url = &shown;
        let resp = self
            .http
            .get(&self.cfg.jwks_url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("cannot fetch the JWKS from {url}: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("the JWKS at {url} answered HTTP {}", resp.status()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("cannot read the JWKS from {url}: {}", e.without_url()))?;
        let doc: JwksDoc = serde_json::from_slice(&body)
            .map_err(|e| format!("the JWKS at {url} is not a JWK set: {e}"))?;
        let mut out = Jwks {
            fetched: Some(Instant::now()),
            ..Jwks::default()
        };
        for raw in doc.keys {
            let jwk: Jwk = match serde_json::from_value(raw) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a JWK this gateway cannot use");
                    continue;
                }
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
            let key = match DecodingKey::from_jwk(&jwk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a JWK this gateway cannot use");
                    continue;
                }
            };
            let key = Arc::new(Key { key, alg });
            match jwk.common.key_id {
                Some(kid) => {
                    out.by_kid.insert(kid, key);
                }
                None => out.anonymous.push(key),
            }
        }
        Ok(out)
    }

    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, AuthError> {
        if self.stale()
            && let Err(e) = self.refresh(true).await
        {
            tracing::warn!(error = %e, "JWKS refresh failed; using the keys cached before");
        }
        if let Some(k) = self.lookup(kid, alg) {
            return Ok(k);
        }
        // Unknown key id: the issuer may have rotated its keys.
        if let Err(e) = self.refresh(true).await {
            tracing::warn!(error = %e, "JWKS refetch for an unknown key id failed");
        }
        self.lookup(kid, alg).ok_or_else(|| {
            AuthError::Invalid(match kid {
                Some(kid) => {
                    format!("no signing key with kid `{kid}` for {alg:?} in the issuer's JWKS")
                }
                None => format!("the token has no kid and no single {alg:?} key matches"),
            })
        })
    }

    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed JWT header: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref(), header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audience);
        v.leeway = self.cfg.leeway.0.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &v)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    match e.kind() {
                        K::ExpiredSignature => AuthError::Expired,
                        K::InvalidAudience => AuthError::Invalid(
                            "the token's audience (aud) is not this gateway".into(),
                        ),
                        K::InvalidIssuer => AuthError::Invalid(format!(
                            "the token's issuer (iss) is not `{}`",
                            self.cfg.issuer
                        )),
                        K::ImmatureSignature => {
                            AuthError::Invalid("the token is not valid yet (nbf)".into())
                        }
                        K::InvalidSignature => AuthError::Invalid("bad signature".into()),
                        // The header's alg is not one the key (chosen by kid) verifies: a JWK
                        // need not say its algorithm, so its type decides.
                        K::InvalidAlgorithm | K::InvalidKeyFormat => AuthError::Invalid(
                            "the token's algorithm (alg) does not fit the key its kid names".into(),
                        ),
                        K::MissingRequiredClaim(c) => {
                            AuthError::Invalid(format!("the token has no `{c}` claim"))
                        }
                        other => AuthError::Invalid(format!("{other:?}")),
                    }
                })?;
        let claims = data.claims;
        let subject = claims
            .get(&self.cfg.principal_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the token has no string `{}` claim naming its principal",
                    self.cfg.principal_claim
                ))
            })?;
        Ok(Principal {
            id: Arc::from(format!("jwt:{subject}")),
            scopes: scopes(&claims),
            claims: Arc::new(claims),
        })
    }
}

/// Scopes from `scope` (space-separated, RFC 8693/9068) or `scp` (string or array).
fn scopes(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(serde_json::Value::String(s)) => {
                out.extend(s.split_whitespace().map(str::to_string))
            }
            Some(serde_json::Value::Array(a)) => {
                out.extend(a.iter().filter_map(|v| v.as_str()).map(str::to_string))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing_and_key_hashing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(AuthError::Missing));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(bearer(&h), Err(AuthError::Invalid(_))));
        h.insert(header::AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h), Ok("tok"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let claims = serde_json::json!({"scope": "a b", "scp": ["c"]});
        assert_eq!(scopes(claims.as_object().unwrap()), vec!["a", "b", "c"]);
    }
}
