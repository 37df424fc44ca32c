//! Guardrails as interceptor actions: `callout` asks an external HTTP service (continue,
//! reject, or replace the params/result), `detect` finds secrets and configured patterns in a
//! message and redacts or blocks them. See docs/interceptor.md ("Guardrails").

use super::rules::BLOCKED;
use crate::pipeline::{Direction, FrameCtx, Verdict};
use regex::Regex;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use shadowcat_proto::{Frame, FrameKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Default time a callout gets (waiting for a free slot included).
pub const DEFAULT_CALLOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default callouts of one rule in flight at once.
pub const DEFAULT_CALLOUT_CONCURRENCY: usize = 64;
/// Largest callout answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// What a redacted match becomes.
pub const REDACTED_SECRET: &str = "[REDACTED]";

/// The built-in secret detectors (`detectors = ["secrets"]`): cloud and SaaS keys, tokens and
/// private keys, by their documented shapes.
const SECRETS: &[&str] = &[
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bglpat-[A-Za-z0-9_-]{20,}\b",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",
    r"\b[rs]k_live_[A-Za-z0-9]{20,}\b",
    r"\bAIza[0-9A-Za-z_-]{35}\b",
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}\b",
    r"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )?PRIVATE KEY-----)?",
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
];

/// What a callout can come to: the service's decision, or a failure let through (`open`) or
/// refused (`closed`) by the rule's `failure_mode`. The `outcome` label of the metrics.
pub const OUTCOMES: [&str; 5] = [
    "continue",
    "reject",
    "replace",
    "failed_open",
    "failed_closed",
];

/// Rules counted apart in the metrics; beyond, further rule names share one series
/// ([`OTHER_RULES`]): a rules file reloaded with ever new names cannot grow them without bound.
const MAX_COUNTED_RULES: usize = 1_000;
/// The rule label of the callouts of rules beyond [`MAX_COUNTED_RULES`].
pub const OTHER_RULES: &str = "(other)";

/// One rule's callouts since the proxy started: per outcome ([`OUTCOMES`]), and the time spent.
#[derive(Debug, Default)]
pub struct CalloutCounts {
    /// By outcome, in the order of [`OUTCOMES`].
    pub outcomes: [AtomicU64; 5],
    /// Time spent deciding, in microseconds, over all of them.
    pub micros: AtomicU64,
}

type CountsByRule = std::collections::BTreeMap<String, Arc<CalloutCounts>>;
static COUNTS: LazyLock<Mutex<CountsByRule>> = LazyLock::new(Mutex::default);

/// The counts of `rule`'s callouts (made on first use).
fn counts_of(rule: &str) -> Arc<CalloutCounts> {
    let mut all = crate::sync::lock(&COUNTS);
    if let Some(c) = all.get(rule) {
        return c.clone();
    }
    let key = if all.len() < MAX_COUNTED_RULES {
        rule
    } else {
        OTHER_RULES
    };
    all.entry(key.to_string()).or_default().clone()
}

/// Every rule's callout counts so far (for `/metrics`), by rule name.
pub fn callout_counts() -> Vec<(String, Arc<CalloutCounts>)> {
    crate::sync::lock(&COUNTS)
        .iter()
        .map(|(r, c)| (r.clone(), c.clone()))
        .collect()
}

/// An external guardrail service.
#[derive(Debug, Clone)]
pub struct Callout {
    pub url: String,
    pub timeout: Duration,
    /// `failure_mode = "open"`: a callout that fails lets the message through.
    pub fail_open: bool,
    permits: Arc<Semaphore>,
    client: reqwest::Client,
    /// `Authorization: Bearer …` for the service (from `token_env`).
    token: Option<String>,
}

impl Callout {
    /// A callout to `url` (http or https).
    pub fn new(
        url: &str,
        timeout: Duration,
        fail_open: bool,
        concurrency: usize,
        token: Option<String>,
    ) -> Result<Callout, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("url `{url}`: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("url `{url}` must be http:// or https://"));
        }
        if concurrency == 0 {
            return Err("max_concurrency must be at least 1".into());
        }
        if timeout.is_zero() {
            return Err("timeout_ms must be above 0".into());
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("callout client: {e}"))?;
        Ok(Callout {
            url: url.to_string(),
            timeout,
            fail_open,
            permits: Arc::new(Semaphore::new(concurrency)),
            client,
            token,
        })
    }

    /// Ask the service about `frame`; the verdict comes later.
    pub(super) fn ask(
        &self,
        rule: &str,
        ctx: &FrameCtx<'_>,
        method: Option<&str>,
        target: Option<&str>,
        frame: &Frame,
    ) -> Verdict {
        let message = std::str::from_utf8(frame.raw())
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
        let body = json!({
            "rule": rule,
            "direction": match ctx.direction {
                Direction::ClientToServer => "c2s",
                Direction::ServerToClient => "s2c",
            },
            "session": (ctx.session != "-").then_some(ctx.session),
            "principal": ctx.principal,
            "route": ctx.route.map(crate::front::http::route_path),
            "method": method,
            "target": target,
            "message": message,
        })
        .to_string();
        let (me, rule, frame) = (self.clone(), rule.to_string(), frame.clone());
        Verdict::Defer(Box::pin(async move {
            let started = Instant::now();
            let counts = counts_of(&rule);
            let count = |outcome: &str| {
                if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
                    counts.outcomes[i].fetch_add(1, Ordering::Relaxed);
                }
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                counts.micros.fetch_add(micros, Ordering::Relaxed);
            };
            let decided = tokio::time::timeout(me.timeout, me.decide(body)).await;
            let why = match decided {
                Ok(Ok(d)) => {
                    let decision = d.decision.clone();
                    match d.verdict(&rule, &frame) {
                        Ok(v) => {
                            count(&decision);
                            return v;
                        }
                        Err(why) => why,
                    }
                }
                Ok(Err(why)) => why,
                Err(_) => CalloutError::Timeout(me.timeout),
            };
            count(if me.fail_open {
                "failed_open"
            } else {
                "failed_closed"
            });
            if me.fail_open {
                tracing::warn!(rule, reason = %why, "guardrail callout failed; the message goes on (failure_mode = open)");
                Verdict::Forward
            } else {
                tracing::warn!(rule, reason = %why, "guardrail callout failed; the message is refused (failure_mode = closed)");
                super::apply::block(
                    &frame,
                    BLOCKED,
                    &format!("refused: guardrail `{rule}` could not decide ({why})"),
                )
            }
        }))
    }

    async fn decide(&self, body: String) -> Result<Decision, CalloutError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CalloutError::Closed)?;
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CalloutError::Unreachable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(CalloutError::Status(resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(CalloutError::TooLarge);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CalloutError::Read(e.without_url().to_string()))?;
        if bytes.len() > MAX_ANSWER {
            return Err(CalloutError::TooLarge);
        }
        serde_json::from_slice(&bytes).map_err(|e| CalloutError::Invalid(e.to_string()))
    }
}

/// Why a callout gave no decision the proxy can carry out (then `failure_mode` decides).
#[derive(Debug, thiserror::Error)]
enum CalloutError {
    /// The proxy is shutting the callout down.
    #[error("the callout is closed")]
    Closed,
    /// The service could not be reached.
    #[error("cannot reach the guardrail service: {0}")]
    Unreachable(String),
    /// It answered with an HTTP error.
    #[error("the guardrail service answered HTTP {0}")]
    Status(http::StatusCode),
    /// Its answer is larger than `MAX_ANSWER`.
    #[error("the guardrail service's answer is too large")]
    TooLarge,
    /// Its answer could not be read.
    #[error("reading the guardrail answer: {0}")]
    Read(String),
    /// Its answer is not a decision.
    #[error("the guardrail answer is not valid: {0}")]
    Invalid(String),
    /// A decision that cannot be carried out (unknown, or a replacement that is not a valid
    /// message for this one).
    #[error("{0}")]
    Unusable(String),
    /// No decision within the callout's timeout.
    #[error("no decision within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// What the service says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    decision: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
}

impl Decision {
    /// The verdict it stands for; `Err` (why) when it cannot be carried out.
    fn verdict(self, rule: &str, frame: &Frame) -> Result<Verdict, CalloutError> {
        match self.decision.as_str() {
            "continue" => Ok(Verdict::Forward),
            "reject" => Ok(super::apply::block(
                frame,
                self.code.unwrap_or(BLOCKED),
                self.message
                    .as_deref()
                    .unwrap_or(&format!("refused by guardrail `{rule}`")),
            )),
            "replace" => replaced(frame, self.params, self.result).map(Verdict::Replace),
            other => Err(CalloutError::Unusable(format!(
                "decision `{other}`: use continue, reject or replace"
            ))),
        }
    }
}

/// `frame` with new params (a request or notification) or a new result (a response).
fn replaced(
    frame: &Frame,
    params: Option<Box<RawValue>>,
    result: Option<Box<RawValue>>,
) -> Result<Frame, CalloutError> {
    let unusable = |why: String| CalloutError::Unusable(why);
    let msg = match (frame.kind(), params, result) {
        (FrameKind::Request | FrameKind::Notification, Some(p), None) => {
            if !p.get().trim_start().starts_with('{') {
                return Err(unusable("replace: `params` must be an object".into()));
            }
            let mut m = json!({"jsonrpc": "2.0", "method": frame.method(), "params": p});
            if let Some(id) = frame.id() {
                m["id"] = json!(id);
            }
            m
        }
        (FrameKind::Response | FrameKind::Error, None, Some(r)) => {
            json!({"jsonrpc": "2.0", "id": frame.id(), "result": r})
        }
        _ => {
            return Err(unusable(
                "replace needs `params` for a request or notification, `result` for a reply".into(),
            ));
        }
    };
    let bytes = serde_json::to_vec(&msg).map_err(|e| unusable(e.to_string()))?;
    let new = Frame::parse_single(bytes.into()).map_err(|e| unusable(format!("replace: {e}")))?;
    // Fail closed: a replacement may not point the request at another tool, prompt or
    // resource (rules and authorization before this stage judged the original one).
    if new.target() != frame.target() {
        return Err(unusable(format!(
            "replace changed the {} from `{}` to `{}`",
            match frame.method() {
                Some("tools/call") => "tool",
                Some("prompts/get") => "prompt",
                _ => "resource",
            },
            frame.target().unwrap_or(""),
            new.target().unwrap_or("")
        )));
    }
    Ok(new)
}

/// Built-in and configured patterns, and what to do with a match.
#[derive(Debug, Clone)]
pub struct Detect {
    /// Every pattern in one alternation.
    any: Regex,
    /// Redact matches (true) or block the message.
    pub redact: bool,
}

impl Detect {
    /// `detectors` (only `secrets`) and extra `patterns`.
    pub fn new(detectors: &[String], patterns: &[String], redact: bool) -> Result<Detect, String> {
        let mut all: Vec<String> = Vec::new();
        for d in detectors {
            match d.as_str() {
                "secrets" => all.extend(SECRETS.iter().map(|s| s.to_string())),
                other => return Err(format!("detector `{other}`: the built-in one is `secrets`")),
            }
        }
        for p in patterns {
            Regex::new(p).map_err(|e| format!("pattern `{p}`: {e}"))?;
            all.push(p.clone());
        }
        if all.is_empty() {
            return Err("detect needs `detectors = [\"secrets\"]` and/or `patterns`".into());
        }
        let joined = all
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        let any = Regex::new(&joined).map_err(|e| e.to_string())?;
        Ok(Detect { any, redact })
    }

    /// Look at the params (requests, notifications) or the result/error (replies) of `frame`.
    pub(super) fn check(&self, rule: &str, frame: &Frame) -> Option<Verdict> {
        // Most messages hold nothing: a scan of the raw text first, a parse only on a hit.
        let text = std::str::from_utf8(frame.raw()).ok()?;
        if !self.any.is_match(text) {
            return None;
        }
        let mut v: Value = serde_json::from_str(text).ok()?;
        let key = match frame.kind() {
            FrameKind::Response => "result",
            FrameKind::Error => "error",
            _ => "params",
        };
        let part = v.get_mut(key)?;
        if !self.redact {
            return self
                .found(part)
                .then(|| super::apply::block(frame, BLOCKED, &format!("refused: guardrail `{rule}` found a secret or a forbidden pattern in the message")));
        }
        if !self.scrub(part) {
            return None;
        }
        tracing::info!(rule, "guardrail redacted a secret or a forbidden pattern");
        let bytes = serde_json::to_vec(&v).ok()?;
        Frame::parse_single(bytes.into()).ok().map(Verdict::Replace)
    }

    fn found(&self, v: &Value) -> bool {
        match v {
            Value::String(s) => self.any.is_match(s),
            Value::Array(a) => a.iter().any(|x| self.found(x)),
            Value::Object(o) => o.iter().any(|(k, x)| self.any.is_match(k) || self.found(x)),
            _ => false,
        }
    }

    /// Replace every match inside string values; true when something changed.
    fn scrub(&self, v: &mut Value) -> bool {
        match v {
            Value::String(s) if self.any.is_match(s) => {
                *s = self.any.replace_all(s, REDACTED_SECRET).into_owned();
                true
            }
            Value::Array(a) => a.iter_mut().fold(false, |c, x| self.scrub(x) | c),
            Value::Object(o) => o.values_mut().fold(false, |c, x| self.scrub(x) | c),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        Frame::parse_single(v.to_string().into()).unwrap()
    }

    #[test]
    fn secrets_are_found_and_redacted_in_results() {
        let d = Detect::new(&["secrets".into()], &[], true).unwrap();
        let key = "AKIAIOSFODNN7EXAMPLE";
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----";
        let f = frame(json!({"jsonrpc":"2.0","id":1,"result":{"content":[
            {"type":"text","text": format!("key {key} and {pem} done")}]}}));
        let Some(Verdict::Replace(out)) = d.check("r", &f) else {
            panic!("not redacted")
        };
        let text = std::str::from_utf8(out.raw()).unwrap();
        assert!(!text.contains(key) && !text.contains("MIIEabc"), "{text}");
        assert!(
            text.contains("key [REDACTED] and [REDACTED] done"),
            "{text}"
        );
        let clean = frame(json!({"jsonrpc":"2.0","id":2,"result":{"content":[]}}));
        assert!(d.check("r", &clean).is_none());
        for token in [
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "xoxb-1234567890-abcdef",
            "sk-ant-abcdefghijklmnopqrstuvwxyz",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ] {
            let f = frame(json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
                "params":{"name":"x","arguments":{"v": token}}}));
            assert!(d.check("r", &f).is_some(), "{token} not found");
        }
    }

    #[test]
    fn block_mode_refuses_requests_and_patterns_are_configurable() {
        let d = Detect::new(&[], &["acct-[0-9]{6}".into()], false).unwrap();
        let f = frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"pay","arguments":{"to":"acct-123456"}}}));
        assert!(matches!(d.check("r", &f), Some(Verdict::Reply(_))));
        // Only the params count: a method name that matches is not a finding.
        let f = frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"acct-000000","arguments":{}}}));
        assert!(
            matches!(d.check("r", &f), Some(Verdict::Reply(_))),
            "the tool name is in params"
        );
        assert!(Detect::new(&["nope".into()], &[], true).is_err());
        assert!(Detect::new(&[], &["(".into()], true).is_err());
        assert!(Detect::new(&[], &[], true).is_err());
    }

    #[test]
    fn replacements_keep_the_target() {
        let f = frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"x"}}}));
        let p = |v: Value| Some(serde_json::value::to_raw_value(&v).unwrap());
        let ok = replaced(
            &f,
            p(json!({"name":"echo","arguments":{"message":"y"}})),
            None,
        )
        .unwrap();
        assert!(std::str::from_utf8(ok.raw()).unwrap().contains("\"y\""));
        assert_eq!(ok.id(), f.id());
        let e = replaced(&f, p(json!({"name":"rm","arguments":{}})), None).unwrap_err();
        assert!(e.to_string().contains("from `echo` to `rm`"), "{e}");
        assert!(replaced(&f, p(json!([1])), None).is_err());
        assert!(replaced(&f, None, p(json!({}))).is_err());
        let reply = frame(json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}}));
        let r = replaced(
            &reply,
            None,
            p(json!({"content":[{"type":"text","text":"z"}]})),
        )
        .unwrap();
        assert_eq!(r.kind(), FrameKind::Response);
    }
}
