//! The gateway's effective configuration as the admin API shows it: every secret replaced by
//! `[REDACTED]` (the tapes' marker).
//!
//! Redacted: values of members whose name says secret (`token`, `secret`, `password`,
//! `sha256`, `api_key`, `authorization`, `cookie`, `credential`, `private_key`; names ending
//! in `_env` are variable *names* and stay), every value of `headers` and `env` tables, the
//! password and secret query parameters of every URL, and command arguments that follow (or
//! carry, `--token=…`) a secret-looking flag. Redacting by name rather than by field means a
//! secret field added later is hidden without touching this file.

use crate::GatewayConfig;
use serde_json::Value;
use shadowcat_tape::redact::{REDACTED, Redactor, is_secret_header};

const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "sha256",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
];

fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !n.ends_with("_env") && SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// The configuration as JSON, secrets redacted.
pub(crate) fn config(cfg: &GatewayConfig) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    walk(&mut v, &Redactor::default());
    v
}

/// A value under a secret name: scalars are hidden, tables and lists of tables are walked
/// (`api_keys` holds names and scopes besides each `sha256`).
fn hide(v: &mut Value, r: &Redactor) {
    match v {
        Value::Null => {}
        Value::Object(_) => walk(v, r),
        Value::Array(items) => items.iter_mut().for_each(|i| hide(i, r)),
        _ => *v = Value::String(REDACTED.into()),
    }
}

fn walk(v: &mut Value, r: &Redactor) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if is_secret_name(k) {
                    hide(val, r);
                } else if k == "headers" || k == "env" {
                    match val {
                        Value::Object(m) => m.values_mut().for_each(|v| {
                            if !v.is_null() {
                                *v = Value::String(REDACTED.into())
                            }
                        }),
                        other => hide(other, r),
                    }
                } else if k == "args" {
                    args(val, r);
                } else {
                    walk(val, r);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk(i, r)),
        Value::String(s) if s.contains("://") => *s = r.url(s),
        _ => {}
    }
}

/// A flag whose next argument (or `=value`) is a secret: `--token`, `--api-key`, `-p`…
fn secret_flag(arg: &str) -> bool {
    let name = arg.trim_start_matches('-');
    arg.starts_with('-') && (is_secret_name(&name.replace('-', "_")) || is_secret_header(name))
}

fn args(v: &mut Value, r: &Redactor) {
    let Value::Array(items) = v else {
        return walk(v, r);
    };
    let mut hide_next = false;
    for item in items.iter_mut() {
        let Value::String(s) = item else {
            continue;
        };
        if hide_next {
            *s = REDACTED.into();
            hide_next = false;
        } else if let Some((flag, _)) = s.split_once('=')
            && secret_flag(flag)
        {
            *s = format!("{flag}={REDACTED}");
        } else if secret_flag(s) {
            hide_next = true;
        } else if s.contains("://") {
            *s = r.url(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_gone_and_the_rest_is_kept() {
        let text = r#"
[server]
store = "redis://:storepass@redis:6379"
[auth]
[[auth.api_keys]]
name = "ci"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[admin]
token = "admintok"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "http://user:urlpass@a/mcp?api_key=querysecret&x=1"
headers = { Authorization = "Bearer headersecret", "X-Trace" = "t" }
bearer_env = "UP_TOKEN"
[[routes.upstreams]]
command = "server"
args = ["--token", "argsecret", "--api-key=eqsecret", "--port", "8"]
"#;
        let cfg = GatewayConfig::parse("g.toml", text).unwrap();
        let v = config(&cfg);
        let s = v.to_string();
        for secret in [
            "storepass",
            "9f86d08188",
            "admintok",
            "urlpass",
            "querysecret",
            "headersecret",
            "argsecret",
            "eqsecret",
        ] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        let up = &v["routes"][0]["upstreams"][0];
        assert_eq!(up["headers"]["X-Trace"], REDACTED);
        assert_eq!(up["bearer_env"], "UP_TOKEN");
        assert_eq!(
            up["url"],
            "http://user:[REDACTED]@a/mcp?api_key=[REDACTED]&x=1"
        );
        assert_eq!(v["auth"]["api_keys"][0]["name"], "ci");
        assert_eq!(v["admin"]["listen"], "127.0.0.1:7474");
        assert_eq!(
            v["routes"][0]["upstreams"][1]["args"],
            serde_json::json!(["--token", REDACTED, "--api-key=[REDACTED]", "--port", "8"])
        );
        assert_eq!(v["server"]["idle_timeout"], "600s");
        assert_eq!(v["routes"][0]["balance"], "round-robin");
    }
}
