//! Redaction of secrets at capture time, before anything reaches the disk.
//!
//! Always on:
//! * header values of `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and any
//!   header whose name contains `token`, `secret`, `api-key`, `apikey`, `password` or `auth`;
//! * the password of a URL's user info, and URL query parameters with such names;
//! * JSON object members whose key is one of [`SECRET_KEYS`] anywhere in a message, compared
//!   case-insensitively and ignoring `_` and `-` (`accessToken`, `ACCESS-TOKEN` and
//!   `access_token` are one name), after JSON unescaping (`"\u0074oken"` is `token`).
//!
//! Configurable: JSON pointers (into the whole message, e.g. `/params/arguments/password`) and
//! regular expressions applied to every JSON string value (each match is replaced).

use crate::TapeError;
use regex::Regex;
use serde_json::Value;
use std::borrow::Cow;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// JSON member names whose values are always redacted (compared case-insensitively, ignoring
/// `_` and `-`: `accessToken` is `access_token`).
pub const SECRET_KEYS: &[&str] = &[
    "authorization",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "cookie",
];

/// What to redact besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct RedactConfig {
    /// JSON pointers into each message whose value is replaced.
    pub pointers: Vec<String>,
    /// Regular expressions; every match inside a JSON string value is replaced.
    pub patterns: Vec<String>,
}

/// A compiled redaction policy.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    pointers: Vec<String>,
    patterns: Vec<Regex>,
}

/// A URL as logs, metrics labels and error messages show it: scheme, host, port and path; no
/// user info (a user name can be a token too), query parameters by name only (`?api_key&x`), no
/// fragment. Anything else comes back as it is.
pub fn url_label(url: &str) -> String {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => head.to_string(),
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        let names: Vec<&str> = q
            .split('&')
            .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
            .collect();
        out.push_str(&names.join("&"));
    }
    out
}

/// A command as logs, metrics labels and error messages show it: the program's file name only
/// (its arguments may carry secrets).
pub fn command_label(command: &str) -> String {
    std::path::Path::new(command)
        .file_name()
        .map_or_else(|| command.to_string(), |n| n.to_string_lossy().into_owned())
}

/// True for header names whose values are secrets.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["token", "secret", "api-key", "apikey", "password", "auth"]
        .iter()
        .any(|w| n.contains(w))
}

/// The letters of a name that count: lowercase, without the `_` and `-` of snake and kebab case.
fn name_letters(name: &[u8]) -> impl Iterator<Item = u8> + '_ {
    name.iter()
        .filter(|b| !matches!(b, b'_' | b'-'))
        .map(u8::to_ascii_lowercase)
}

fn is_secret_key_bytes(key: &[u8]) -> bool {
    SECRET_KEYS
        .iter()
        .any(|k| name_letters(key).eq(name_letters(k.as_bytes())))
}

fn is_secret_key(key: &str) -> bool {
    is_secret_key_bytes(key.as_bytes())
}

/// Whether raw JSON may hold a member with a secret name: a scan over its strings that looks
/// at every object key (a string followed by `:`). A key with an escape cannot be judged
/// without unescaping, so it counts (the message is then parsed and walked).
fn may_have_secret_key(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        let mut escaped = false;
        while j < raw.len() && raw[j] != b'"' {
            if raw[j] == b'\\' {
                escaped = true;
                j += 1;
            }
            j += 1;
        }
        let body = &raw[start..j.min(raw.len())];
        let mut k = j + 1;
        while k < raw.len() && raw[k].is_ascii_whitespace() {
            k += 1;
        }
        if raw.get(k) == Some(&b':') && (escaped || is_secret_key_bytes(body)) {
            return true;
        }
        i = j + 1;
    }
    false
}

impl Redactor {
    /// Compile a policy; an invalid pointer or regex is an error naming it.
    pub fn new(cfg: &RedactConfig) -> Result<Redactor, TapeError> {
        for p in &cfg.pointers {
            if !(p.is_empty() || p.starts_with('/')) {
                return Err(TapeError::Config(format!(
                    "redaction pointer `{p}` must start with `/` (e.g. /params/arguments/password)"
                )));
            }
        }
        let patterns = cfg
            .patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| {
                    TapeError::Config(format!("redaction pattern `{p}` is not a valid regex: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Redactor {
            pointers: cfg.pointers.clone(),
            patterns,
        })
    }

    /// The value to record for a header.
    pub fn header<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if is_secret_header(name) {
            Cow::Borrowed(REDACTED)
        } else {
            self.text(value)
        }
    }

    /// A URL with the password of its user info and secret query parameters redacted.
    pub fn url(&self, url: &str) -> String {
        let (head, query) = match url.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (url, None),
        };
        let mut out = match head.split_once("://") {
            Some((scheme, rest)) => {
                let (auth, path) = match rest.find('/') {
                    Some(i) => rest.split_at(i),
                    None => (rest, ""),
                };
                match auth.rsplit_once('@') {
                    Some((user, host)) => {
                        let user = match user.split_once(':') {
                            Some((u, _)) => format!("{u}:{REDACTED}"),
                            None => REDACTED.to_string(),
                        };
                        format!("{scheme}://{user}@{host}{path}")
                    }
                    None => head.to_string(),
                }
            }
            None => head.to_string(),
        };
        if let Some(q) = query {
            out.push('?');
            let parts: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_header(k) || is_secret_key(k) => {
                        format!("{k}={REDACTED}")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
        self.text(&out).into_owned()
    }

    /// A command line with the configured patterns applied.
    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        for re in &self.patterns {
            if re.is_match(&out) {
                out = Cow::Owned(re.replace_all(&out, REDACTED).into_owned());
            }
        }
        out
    }

    /// Redact one JSON-RPC message. Returns the bytes unchanged (byte for byte) when there was
    /// nothing to redact; otherwise the message re-serialised with the secrets replaced.
    pub fn message<'a>(&self, raw: &'a [u8]) -> Cow<'a, [u8]> {
        if !self.might_apply(raw) {
            return Cow::Borrowed(raw);
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(raw) else {
            return Cow::Borrowed(raw);
        };
        let mut changed = false;
        for p in &self.pointers {
            if let Some(slot) = v.pointer_mut(p)
                && *slot != Value::String(REDACTED.into())
            {
                *slot = Value::String(REDACTED.into());
                changed = true;
            }
        }
        changed |= self.walk(&mut v);
        if changed {
            Cow::Owned(serde_json::to_vec(&v).unwrap_or_else(|_| raw.to_vec()))
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// Cheap pre-check on the raw bytes so that most messages are never parsed.
    fn might_apply(&self, raw: &[u8]) -> bool {
        if !self.pointers.is_empty() {
            return true;
        }
        let text = String::from_utf8_lossy(raw);
        if self.patterns.iter().any(|re| re.is_match(&text)) {
            return true;
        }
        may_have_secret_key(raw)
    }

    fn walk(&self, v: &mut Value) -> bool {
        match v {
            Value::Object(map) => {
                let mut changed = false;
                for (k, val) in map.iter_mut() {
                    if is_secret_key(k) && !val.is_null() && *val != Value::String(REDACTED.into())
                    {
                        *val = Value::String(REDACTED.into());
                        changed = true;
                    } else {
                        changed |= self.walk(val);
                    }
                }
                changed
            }
            Value::Array(items) => items.iter_mut().fold(false, |c, i| self.walk(i) | c),
            Value::String(s) => match self.text(s) {
                Cow::Owned(new) => {
                    *s = new;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pointers: &[&str], patterns: &[&str]) -> Redactor {
        Redactor::new(&RedactConfig {
            pointers: pointers.iter().map(|s| s.to_string()).collect(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn headers() {
        let d = Redactor::default();
        assert_eq!(d.header("Authorization", "Bearer abc"), REDACTED);
        assert_eq!(d.header("X-Api-Key", "k"), REDACTED);
        assert_eq!(d.header("cookie", "a=b"), REDACTED);
        assert_eq!(d.header("Accept", "application/json"), "application/json");
    }

    #[test]
    fn urls() {
        let d = Redactor::default();
        assert_eq!(
            d.url("https://u:pw@host:1/mcp?api_key=s3&x=1"),
            "https://u:[REDACTED]@host:1/mcp?api_key=[REDACTED]&x=1"
        );
        assert_eq!(d.url("http://h/mcp"), "http://h/mcp");
    }

    #[test]
    fn labels_name_an_upstream_without_its_secrets() {
        assert_eq!(
            url_label("https://user:pw@host:1/mcp?api_key=s3&x=1#frag"),
            "https://host:1/mcp?api_key&x"
        );
        assert_eq!(url_label("http://tok@h/a@b"), "http://h/a@b");
        assert_eq!(url_label("http://h/mcp"), "http://h/mcp");
        assert_eq!(url_label("http://h/mcp?"), "http://h/mcp");
        assert_eq!(url_label("sse+http://u:p@h"), "sse+http://h");
        assert_eq!(command_label("/usr/bin/python3"), "python3");
        assert_eq!(command_label("npx"), "npx");
    }

    #[test]
    fn messages_untouched_unless_needed() {
        let d = Redactor::default();
        let raw = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":1}}}"#;
        assert!(matches!(d.message(raw), Cow::Borrowed(_)));
        let raw = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"Password":"hunter2","n":1}}"#;
        let out = String::from_utf8(d.message(raw).into_owned()).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains(REDACTED));
    }

    #[test]
    fn secret_names_in_any_case_style_and_escaped() {
        let d = Redactor::default();
        let raw = br#"{"jsonrpc":"2.0","id":1,"result":{"accessToken":"camel1","Refresh-Token":"kebab2","CLIENT_SECRET":"snake3","x":{"\u0074oken":"escaped4","ApiKey" : "spaced5"},"_meta":{"progressToken":7},"tokens":8,"note":"token: not a key"}}"#;
        let out = String::from_utf8(d.message(raw).into_owned()).unwrap();
        for secret in ["camel1", "kebab2", "snake3", "escaped4", "spaced5"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result"]["x"]["token"], REDACTED);
        assert_eq!(v["result"]["_meta"]["progressToken"], 7);
        assert_eq!(v["result"]["tokens"], 8);
        assert_eq!(v["result"]["note"], "token: not a key");
        // Nothing secret: the bytes are kept as they were, even with escapes in values.
        let raw =
            br#"{"jsonrpc":"2.0","id":1,"result":{"text":"a \"token\": b","progressToken":1}}"#;
        assert!(matches!(d.message(raw), Cow::Borrowed(_)));
        // Query parameters: the same names.
        assert_eq!(
            d.url("https://h/mcp?accessToken=s&x=1"),
            "https://h/mcp?accessToken=[REDACTED]&x=1"
        );
    }

    #[test]
    fn pointers_and_patterns() {
        let red = r(&["/params/arguments/card"], &["sk-[A-Za-z0-9]{8,}"]);
        let raw = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"arguments":{"card":"4111","note":"key sk-ABCDEFGH123 here"}}}"#;
        let out: Value = serde_json::from_slice(&red.message(raw)).unwrap();
        assert_eq!(out["params"]["arguments"]["card"], REDACTED);
        assert_eq!(out["params"]["arguments"]["note"], "key [REDACTED] here");
        assert!(
            Redactor::new(&RedactConfig {
                pointers: vec!["params".into()],
                patterns: vec![]
            })
            .is_err()
        );
        assert!(
            Redactor::new(&RedactConfig {
                pointers: vec![],
                patterns: vec!["(".into()]
            })
            .is_err()
        );
    }
}
