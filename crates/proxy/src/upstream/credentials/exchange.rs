//! The OAuth 2.1 client-credentials grant (RFC 6749 §4.4), or RFC 8693 token exchange of a
//! client's token: one POST to the token endpoint, the
//! client authenticated with HTTP Basic (`client_secret_basic`, the default) or in the form body
//! (`client_secret_post`), the target named with `scope`, RFC 8707 `resource` and/or `audience`.

use super::{CredentialError, OAuthClient};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use http::{HeaderValue, header};
use serde::Deserialize;
use std::sync::OnceLock;
use std::time::Duration;

/// Largest token endpoint answer read.
const MAX_BODY: usize = 64 * 1024;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthMethod {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// What the token endpoint granted.
pub(super) struct Grant {
    /// `Bearer TOKEN`, ready to send.
    pub value: HeaderValue,
    /// `expires_in`, when the endpoint said.
    pub lifetime: Option<Duration>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// One HTTP client for every token endpoint of the process.
fn client() -> Result<&'static reqwest::Client, CredentialError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CredentialError(format!("cannot build the HTTP client: {e}")))?;
    Ok(CLIENT.get_or_init(|| c))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The error chain of a transport error (reqwest's own message hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Ask the token endpoint for a token.
pub(super) async fn request(c: &OAuthClient) -> Result<Grant, CredentialError> {
    let url = &c.token_url;
    let label = shadowcat_tape::redact::url_label(url);
    let fail = |what: String| CredentialError(format!("token endpoint {label}: {what}"));
    let mut body = match (c.exchange, &c.subject_token) {
        (false, _) => vec![("grant_type", "client_credentials")],
        // RFC 8693: the client's token for one meant for the upstream.
        (true, Some(subject)) => vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ],
        (true, None) => {
            return Err(fail("no client token to exchange".into()));
        }
    };
    if let Some(s) = &c.scope {
        body.push(("scope", s));
    }
    if let Some(r) = &c.resource {
        body.push(("resource", r));
    }
    if let Some(a) = &c.audience {
        body.push(("audience", a));
    }
    let mut req = client()?
        .post(url)
        .timeout(c.timeout)
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    match c.auth_method {
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&c.client_id), enc(&c.client_secret));
            req = req.header(
                header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(pair)),
            );
        }
        AuthMethod::ClientSecretPost => {
            body.push(("client_id", &c.client_id));
            body.push(("client_secret", &c.client_secret));
        }
    }
    let resp = req.body(form(&body)).send().await.map_err(|e| {
        let e = e.without_url();
        if e.is_timeout() {
            fail(format!("no answer within {:?}", c.timeout))
        } else {
            fail(format!("cannot reach it: {}", chain(&e)))
        }
    })?;
    let status = resp.status();
    let mut bytes = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            fail(format!(
                "reading the answer failed: {}",
                chain(&e.without_url())
            ))
        })?;
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(fail(format!("the answer exceeds {MAX_BODY} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let detail = match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(ErrorResponse {
                error: Some(code),
                error_description,
            }) => match error_description {
                Some(d) => format!(": {code} ({d})"),
                None => format!(": {code}"),
            },
            _ => String::new(),
        };
        return Err(fail(format!(
            "refused the client `{}` with HTTP {status}{detail}",
            c.client_id
        )));
    }
    let t: TokenResponse = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("the answer is not a token response: {e}")))?;
    let token = t
        .access_token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| fail("the answer has no access_token".into()))?;
    if let Some(tt) = &t.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(fail(format!(
            "token_type `{tt}` is not supported (only Bearer)"
        )));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
        .map_err(|_| fail("the access_token is not a valid header value".into()))?;
    value.set_sensitive(true);
    let lifetime = match t.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let secs = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| fail(format!("expires_in `{v}` is not a number of seconds")))?;
            Some(Duration::from_secs_f64(secs.min(1e9)))
        }
    };
    Ok(Grant { value, lifetime })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_urlencoded() {
        assert_eq!(
            form(&[("grant_type", "client_credentials"), ("scope", "a b&c")]),
            "grant_type=client_credentials&scope=a+b%26c"
        );
    }
}
