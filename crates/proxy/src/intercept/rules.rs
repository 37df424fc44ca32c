//! The rules file (TOML or YAML, one schema) and its compiled form. See `docs/interceptor.md`.

use super::pattern::{Pattern, Pointer};
use crate::pipeline::Direction;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use shadowcat_proto::FrameKind;
use std::time::Duration;

/// Default JSON-RPC code of `block`.
pub const BLOCKED: i64 = -32003;

/// Kind mask bit: requests.
pub const KIND_REQUEST: u8 = 1;
/// Kind mask bit: notifications.
pub const KIND_NOTIFICATION: u8 = 2;
/// Kind mask bit: responses (results).
pub const KIND_RESPONSE: u8 = 4;
/// Kind mask bit: error responses.
pub const KIND_ERROR: u8 = 8;

/// The mask bit of a frame kind.
pub fn kind_bit(k: FrameKind) -> u8 {
    match k {
        FrameKind::Request => KIND_REQUEST,
        FrameKind::Notification => KIND_NOTIFICATION,
        FrameKind::Response => KIND_RESPONSE,
        FrameKind::Error => KIND_ERROR,
    }
}

/// The syntax of a rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML: `[[rule]]` tables.
    Toml,
    /// YAML: a `rule:` (or `rules:`) list of mappings.
    Yaml,
}

impl Format {
    /// By file name: `.yaml` and `.yml` are YAML, anything else TOML.
    pub fn of(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Toml,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRules {
    #[serde(default, rename = "rule", alias = "rules")]
    rules: Vec<RawRule>,
    #[serde(default)]
    pause: Option<RawPause>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPause {
    max_paused: Option<usize>,
    max_paused_per_session: Option<usize>,
}

/// Default of `[pause] max_paused`: messages held by `pause` rules at once, whole proxy.
pub const DEFAULT_MAX_PAUSED: usize = 100;
/// Default of `[pause] max_paused_per_session`.
pub const DEFAULT_MAX_PAUSED_PER_SESSION: usize = 10;

/// How many messages `pause` rules may hold at once; a message over either cap is refused
/// (fail closed) instead of held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseLimits {
    /// Across the whole proxy.
    pub max_paused: usize,
    /// In one session.
    pub max_paused_per_session: usize,
}

impl Default for PauseLimits {
    fn default() -> Self {
        PauseLimits {
            max_paused: DEFAULT_MAX_PAUSED,
            max_paused_per_session: DEFAULT_MAX_PAUSED_PER_SESSION,
        }
    }
}

impl PauseLimits {
    fn compile(raw: Option<RawPause>) -> Result<PauseLimits, String> {
        let Some(raw) = raw else {
            return Ok(PauseLimits::default());
        };
        let l = PauseLimits {
            max_paused: raw.max_paused.unwrap_or(DEFAULT_MAX_PAUSED),
            max_paused_per_session: raw
                .max_paused_per_session
                .unwrap_or(DEFAULT_MAX_PAUSED_PER_SESSION),
        };
        if l.max_paused == 0 || l.max_paused_per_session == 0 {
            return Err(
                "[pause]: max_paused and max_paused_per_session must be at least 1 (a pause \
                 rule that can hold nothing would refuse every message it matches; use \
                 action = \"block\" for that)"
                    .into(),
            );
        }
        if l.max_paused_per_session > l.max_paused {
            return Err(format!(
                "[pause]: max_paused_per_session ({}) cannot exceed max_paused ({})",
                l.max_paused_per_session, l.max_paused
            ));
        }
        Ok(l)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCond {
    pointer: String,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default)]
    matches: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    exists: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawError {
    code: Option<i64>,
    message: String,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    enabled: Option<bool>,
    direction: Option<String>,
    kind: Option<String>,
    method: Option<String>,
    tool: Option<String>,
    resource: Option<String>,
    prompt: Option<String>,
    session: Option<String>,
    principal: Option<String>,
    route: Option<String>,
    #[serde(default)]
    when: Vec<RawCond>,
    action: String,
    // block
    code: Option<i64>,
    message: Option<String>,
    // modify
    #[serde(default)]
    set: serde_json::Map<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
    // mock
    result: Option<Value>,
    error: Option<RawError>,
    // delay
    delay_ms: Option<u64>,
    // pause, callout
    timeout_ms: Option<u64>,
    on_timeout: Option<String>,
    // callout
    url: Option<String>,
    failure_mode: Option<String>,
    max_concurrency: Option<usize>,
    token_env: Option<String>,
    // detect
    #[serde(default)]
    detectors: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    on_match: Option<String>,
}

/// A condition on the message, by JSON pointer (into the whole message: `/params/…`,
/// `/result/…`).
#[derive(Debug, Clone)]
pub enum Test {
    /// The value equals this JSON value.
    Equals(Value),
    /// The value (a string, or else its JSON text) matches this regex.
    Matches(Regex),
    /// The value (a string, or else its JSON text) contains this text.
    Contains(String),
    /// The pointer resolves (true) or not (false).
    Exists(bool),
}

/// One condition.
#[derive(Debug, Clone)]
pub struct Cond {
    /// Where.
    pub pointer: Pointer,
    /// What must hold.
    pub test: Test,
}

impl Cond {
    /// Does the message satisfy it?
    pub fn holds(&self, msg: &Value) -> bool {
        let v = self.pointer.get(msg);
        fn text(v: &Value) -> std::borrow::Cow<'_, str> {
            match v {
                Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                other => std::borrow::Cow::Owned(other.to_string()),
            }
        }
        match &self.test {
            Test::Exists(want) => v.is_some() == *want,
            Test::Equals(want) => v == Some(want),
            Test::Matches(re) => v.is_some_and(|v| re.is_match(&text(v))),
            Test::Contains(s) => v.is_some_and(|v| text(v).contains(s.as_str())),
        }
    }
}

/// What happens when a paused message's timeout runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// Let it through unchanged.
    Continue,
    /// Discard it (a request is answered with an error).
    Drop,
    /// Block it (a JSON-RPC error to the sender).
    Block,
}

/// What a rule does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Let it through (and stop looking at lower-priority rules).
    Continue,
    /// Answer the sender with a JSON-RPC error (requests), turn a reply into an error, or
    /// discard a notification.
    Block {
        /// JSON-RPC code.
        code: i64,
        /// Error message.
        message: String,
    },
    /// Change the message: set values at JSON pointers, then remove others.
    Modify {
        /// `(pointer, value)`.
        set: Vec<(String, Value)>,
        /// Pointers.
        remove: Vec<String>,
    },
    /// Answer a request with a synthetic response (it never reaches the other side); replace a
    /// reply's result; discard a notification.
    Mock {
        /// `Ok(result)` or `Err(error object)`.
        reply: Result<Value, Value>,
    },
    /// Hold the message this long, then let it through.
    Delay(Duration),
    /// Hold the message until a person resumes, edits or drops it (`shadowcat intercept`), or
    /// the timeout runs out.
    Pause {
        /// How long to wait.
        timeout: Duration,
        /// What then.
        on_timeout: OnTimeout,
    },
    /// Ask an external guardrail service: continue, reject, or replace the params/result.
    Callout(super::guard::Callout),
    /// Look for secrets and patterns: redact or block on a match; no match, later rules apply.
    Detect(super::guard::Detect),
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name for logs and the admin API.
    pub name: String,
    /// Higher runs first; ties keep file order.
    pub priority: i64,
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Which kinds of message, as a mask of [`KIND_REQUEST`] … (default: requests and
    /// notifications; replies only when asked for with `kind = "reply"`, `"response"`,
    /// `"error"` or `"any"`).
    pub kinds: u8,
    /// Method pattern (replies match the method of the request they answer).
    pub method: Option<Pattern>,
    /// Tool name pattern (`tools/call`).
    pub tool: Option<Pattern>,
    /// Resource URI pattern (`resources/read`, subscribe, unsubscribe).
    pub resource: Option<Pattern>,
    /// Prompt name pattern (`prompts/get`).
    pub prompt: Option<Pattern>,
    /// Proxy session id pattern.
    pub session: Option<Pattern>,
    /// Authenticated principal pattern (gateway with `[auth]`): a rule with one never matches a
    /// session without a principal.
    pub principal: Option<Pattern>,
    /// Route pattern (`/mcp`, `/servers/NAME/mcp`): a rule with one never matches on the stdio
    /// front.
    pub route: Option<Pattern>,
    /// Conditions that must all hold.
    pub when: Vec<Cond>,
    /// What to do.
    pub action: Action,
}

/// The rules of one file, in evaluation order.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Sorted by priority (highest first), then file order.
    pub rules: Vec<Rule>,
    /// Caps on the messages `pause` rules hold (`[pause]`).
    pub pause: PauseLimits,
}

/// A value from the file as JSON. TOML date-times arrive as a one-member object naming toml's
/// private marker; they become their text.
fn json_value(v: Value) -> Value {
    const TOML_DATETIME: &str = "$__toml_private_datetime";
    match v {
        Value::Object(mut o) if o.len() == 1 && o.contains_key(TOML_DATETIME) => {
            o.remove(TOML_DATETIME).unwrap_or(Value::Null)
        }
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, json_value(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(json_value).collect()),
        other => other,
    }
}

fn pattern(field: &str, v: Option<String>) -> Result<Option<Pattern>, String> {
    v.map(|s| Pattern::parse(&s).map_err(|e| format!("{field}: {e}")))
        .transpose()
}

fn compile(i: usize, r: RawRule) -> Result<Option<Rule>, String> {
    let name = r.name.clone().unwrap_or_else(|| format!("rule #{}", i + 1));
    let at = |e: String| format!("rule `{name}`: {e}");
    if r.enabled == Some(false) {
        return Ok(None);
    }
    let direction = match r.direction.as_deref() {
        None | Some("any") => None,
        Some("client" | "c2s" | "request") => Some(Direction::ClientToServer),
        Some("server" | "s2c") => Some(Direction::ServerToClient),
        Some(o) => return Err(at(format!("direction `{o}`: use client, server or any"))),
    };
    let kinds = match r.kind.as_deref() {
        None | Some("message") => KIND_REQUEST | KIND_NOTIFICATION,
        Some("any") => KIND_REQUEST | KIND_NOTIFICATION | KIND_RESPONSE | KIND_ERROR,
        Some("request") => KIND_REQUEST,
        Some("notification") => KIND_NOTIFICATION,
        Some("reply") => KIND_RESPONSE | KIND_ERROR,
        Some("response") => KIND_RESPONSE,
        Some("error") => KIND_ERROR,
        Some(o) => {
            return Err(at(format!(
                "kind `{o}`: use message (default: requests and notifications), request, \
                 notification, reply (responses and errors), response, error or any"
            )));
        }
    };
    let mut when = Vec::new();
    for c in r.when {
        let pointer = Pointer::parse(&c.pointer).map_err(at)?;
        let tests = [
            c.equals.map(|v| Test::Equals(json_value(v))),
            c.matches
                .map(|m| {
                    Regex::new(&m)
                        .map(Test::Matches)
                        .map_err(|e| at(format!("matches `{m}`: {e}")))
                })
                .transpose()?,
            c.contains.map(Test::Contains),
            c.exists.map(Test::Exists),
        ];
        let mut any = false;
        for test in tests.into_iter().flatten() {
            any = true;
            when.push(Cond {
                pointer: pointer.clone(),
                test,
            });
        }
        if !any {
            return Err(at(format!(
                "condition on `{}` needs equals, matches, contains or exists",
                c.pointer
            )));
        }
    }
    let action = match r.action.as_str() {
        "continue" => Action::Continue,
        "block" => Action::Block {
            code: r.code.unwrap_or(BLOCKED),
            message: r
                .message
                .unwrap_or_else(|| format!("blocked by interceptor rule `{name}`")),
        },
        "modify" => {
            if r.set.is_empty() && r.remove.is_empty() {
                return Err(at("modify needs `set` and/or `remove`".into()));
            }
            let mut set = Vec::new();
            for (k, v) in r.set {
                if !k.starts_with('/') {
                    return Err(at(format!("set: pointer `{k}` must start with `/`")));
                }
                set.push((k, json_value(v)));
            }
            Action::Modify {
                set,
                remove: r.remove,
            }
        }
        "mock" => match (r.result, r.error) {
            (Some(v), None) => Action::Mock {
                reply: Ok(json_value(v)),
            },
            (None, Some(e)) => {
                let mut o =
                    serde_json::json!({"code": e.code.unwrap_or(BLOCKED), "message": e.message});
                if let Some(d) = e.data {
                    o["data"] = json_value(d);
                }
                Action::Mock { reply: Err(o) }
            }
            _ => return Err(at("mock needs exactly one of `result` and `error`".into())),
        },
        "delay" => Action::Delay(Duration::from_millis(
            r.delay_ms
                .ok_or_else(|| at("delay needs `delay_ms`".into()))?,
        )),
        "pause" => Action::Pause {
            timeout: Duration::from_millis(r.timeout_ms.unwrap_or(300_000)),
            on_timeout: match r.on_timeout.as_deref() {
                // Fail closed: a message nobody decided on is not forwarded unless asked.
                None | Some("block") => OnTimeout::Block,
                Some("continue") => OnTimeout::Continue,
                Some("drop") => OnTimeout::Drop,
                Some(o) => {
                    return Err(at(format!("on_timeout `{o}`: use continue, drop or block")));
                }
            },
        },
        "callout" => {
            let url = r.url.ok_or_else(|| at("callout needs `url`".into()))?;
            let fail_open = match r.failure_mode.as_deref() {
                // Fail closed: a message the guardrail could not judge is not forwarded.
                None | Some("closed") => false,
                Some("open") => true,
                Some(o) => return Err(at(format!("failure_mode `{o}`: use closed or open"))),
            };
            let token = match &r.token_env {
                None => None,
                Some(var) => Some(
                    std::env::var(var)
                        .ok()
                        .filter(|t| !t.trim().is_empty())
                        .ok_or_else(|| {
                            at(format!(
                                "token_env: environment variable `{var}` is not set"
                            ))
                        })?,
                ),
            };
            Action::Callout(
                super::guard::Callout::new(
                    &url,
                    r.timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(super::guard::DEFAULT_CALLOUT_TIMEOUT),
                    fail_open,
                    r.max_concurrency
                        .unwrap_or(super::guard::DEFAULT_CALLOUT_CONCURRENCY),
                    token,
                )
                .map_err(at)?,
            )
        }
        "detect" => {
            let redact = match r.on_match.as_deref() {
                None | Some("block") => false,
                Some("redact") => true,
                Some(o) => return Err(at(format!("on_match `{o}`: use block or redact"))),
            };
            Action::Detect(
                super::guard::Detect::new(&r.detectors, &r.patterns, redact).map_err(at)?,
            )
        }
        o => {
            return Err(at(format!(
                "action `{o}`: use continue, block, modify, mock, delay, pause, callout or detect"
            )));
        }
    };
    Ok(Some(Rule {
        name: name.clone(),
        priority: r.priority,
        direction,
        kinds,
        method: pattern("method", r.method).map_err(at)?,
        tool: pattern("tool", r.tool).map_err(at)?,
        resource: pattern("resource", r.resource).map_err(at)?,
        prompt: pattern("prompt", r.prompt).map_err(at)?,
        session: pattern("session", r.session).map_err(at)?,
        principal: pattern("principal", r.principal).map_err(at)?,
        route: pattern("route", r.route).map_err(at)?,
        when,
        action,
    }))
}

impl RuleSet {
    /// Parse and compile a TOML rules file. The error says what is wrong and where.
    pub fn parse(text: &str) -> Result<RuleSet, String> {
        Self::parse_as(text, Format::Toml)
    }

    /// Parse and compile a rules file in either syntax. Syntax errors name the line and
    /// column; rule errors name the rule and the field.
    pub fn parse_as(text: &str, format: Format) -> Result<RuleSet, String> {
        let file: FileRules = match format {
            Format::Toml => toml::from_str(text).map_err(|e| e.to_string())?,
            Format::Yaml if yaml_is_empty(text) => FileRules {
                rules: Vec::new(),
                pause: None,
            },
            Format::Yaml => serde_norway::from_str(text).map_err(|e| e.to_string())?,
        };
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            if let Some(rule) = compile(i, r)? {
                rules.push(rule);
            }
        }
        // Stable: equal priorities keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let pause = PauseLimits::compile(file.pause)?;
        Ok(RuleSet { rules, pause })
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Some rule may apply to replies (so the methods of requests must be remembered).
    pub fn needs_replies(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.kinds & (KIND_RESPONSE | KIND_ERROR) != 0)
    }
}

/// A YAML file with no document (only comments, blank lines or `---`): no rules, like an empty
/// TOML file.
fn yaml_is_empty(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action_and_sorts_by_priority() {
        let rs = RuleSet::parse(
            r#"
            [[rule]]
            name = "slow"
            action = "delay"
            delay_ms = 10
            [[rule]]
            name = "deny"
            priority = 10
            method = "tools/call"
            tool = "delete_*"
            action = "block"
            [[rule]]
            action = "modify"
            set = { "/params/arguments/x" = 1 }
            remove = ["/params/arguments/y"]
            [[rule]]
            action = "mock"
            result = { content = [{ type = "text", text = "m" }] }
            [[rule]]
            action = "pause"
            timeout_ms = 5
            on_timeout = "block"
            when = [{ pointer = "/params/name", matches = "^e" }]
            [[rule]]
            action = "continue"
            enabled = false
            "#,
        )
        .unwrap();
        let names: Vec<&str> = rs.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["deny", "slow", "rule #3", "rule #4", "rule #5"]);
        assert!(matches!(
            rs.rules[0].action,
            Action::Block { code: BLOCKED, .. }
        ));
    }

    #[test]
    fn pause_caps_have_safe_defaults_and_are_validated() {
        let rs = RuleSet::parse("[[rule]]\naction='pause'").unwrap();
        assert_eq!(rs.pause, PauseLimits::default());
        assert_eq!(
            (rs.pause.max_paused, rs.pause.max_paused_per_session),
            (DEFAULT_MAX_PAUSED, DEFAULT_MAX_PAUSED_PER_SESSION)
        );
        assert!(matches!(
            rs.rules[0].action,
            Action::Pause {
                on_timeout: OnTimeout::Block,
                ..
            }
        ));
        let rs = RuleSet::parse("[pause]\nmax_paused = 7\nmax_paused_per_session = 7").unwrap();
        assert_eq!(
            (rs.pause.max_paused, rs.pause.max_paused_per_session),
            (7, 7)
        );
        let rs = RuleSet::parse_as(
            "pause:\n  max_paused_per_session: 1\nrule:\n  - action: pause\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(
            (rs.pause.max_paused, rs.pause.max_paused_per_session),
            (100, 1)
        );
        let e = RuleSet::parse("[pause]\nmax_paused = 0").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = RuleSet::parse("[pause]\nmax_paused_per_session = 0").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = RuleSet::parse("[pause]\nmax_paused = 5\nmax_paused_per_session = 6").unwrap_err();
        assert!(e.contains("cannot exceed"), "{e}");
        let e = RuleSet::parse("[pause]\nmax = 5").unwrap_err();
        assert!(e.contains("max"), "{e}");
        let e = RuleSet::parse("[pause]\nmax_paused = -1").unwrap_err();
        assert!(e.contains("max_paused"), "{e}");
    }

    #[test]
    fn errors_name_the_rule_and_field() {
        let e = RuleSet::parse("[[rule]]\nname='x'\naction='explode'").unwrap_err();
        assert!(e.contains("rule `x`") && e.contains("explode"), "{e}");
        let e = RuleSet::parse("[[rule]]\naction='block'\nmethod='/(/'").unwrap_err();
        assert!(e.contains("method"), "{e}");
        let e = RuleSet::parse("[[rule]]\naction='block'\nbogus=1").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = RuleSet::parse("[[rule]]\naction='mock'").unwrap_err();
        assert!(e.contains("result"), "{e}");
        assert!(RuleSet::parse("not toml [").is_err());
        assert!(RuleSet::parse("").unwrap().is_empty());
        let e = RuleSet::parse("[[rule]]\naction='block'\nprincipal='/(/'").unwrap_err();
        assert!(e.contains("principal"), "{e}");
    }

    #[test]
    fn yaml_has_the_same_schema() {
        let toml = RuleSet::parse(
            r#"
            [[rule]]
            name = "deny"
            priority = 10
            principal = "team-*"
            tool = "delete_*"
            when = [{ pointer = "/params/arguments/n", equals = 3 }]
            action = "block"
            code = -32099
            [[rule]]
            name = "fake"
            action = "mock"
            result = { content = [{ type = "text", text = "m" }], at = 1979-05-27T07:32:00Z }
            [[rule]]
            name = "edit"
            action = "modify"
            set = { "/params/arguments/x" = [1, true, "s"] }
            "#,
        )
        .unwrap();
        let yaml = RuleSet::parse_as(
            r#"
# the same rules as YAML
rule:
  - name: deny
    priority: 10
    principal: team-*
    tool: delete_*
    when:
      - pointer: /params/arguments/n
        equals: 3
    action: block
    code: -32099
  - name: fake
    action: mock
    result:
      content: [{type: text, text: m}]
      at: "1979-05-27T07:32:00Z"
  - name: edit
    action: modify
    set: {"/params/arguments/x": [1, true, s]}
"#,
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(format!("{toml:?}"), format!("{yaml:?}"));
        assert!(matches!(
            &yaml.rules[1].action,
            Action::Mock { reply: Ok(v) } if v["at"] == "1979-05-27T07:32:00Z"
        ));
        assert!(
            RuleSet::parse_as("# nothing yet\n---\n", Format::Yaml)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            RuleSet::parse_as("rules: []", Format::Yaml)
                .unwrap()
                .rules
                .len(),
            0
        );
    }

    #[test]
    fn bad_yaml_says_where() {
        let e = RuleSet::parse_as("rule:\n  - action: block\n    bogus: 1\n", Format::Yaml)
            .unwrap_err();
        assert!(e.contains("bogus") && e.contains("line 3"), "{e}");
        let e =
            RuleSet::parse_as("rule:\n  - action: block\n   tool: [x\n", Format::Yaml).unwrap_err();
        assert!(e.contains("line"), "{e}");
        let e = RuleSet::parse_as("rule:\n  - action: explode\n", Format::Yaml).unwrap_err();
        assert!(e.contains("rule `rule #1`") && e.contains("explode"), "{e}");
        let e = RuleSet::parse_as("rule: 3\n", Format::Yaml).unwrap_err();
        assert!(e.contains("sequence"), "{e}");
        assert_eq!(Format::of(std::path::Path::new("r.YML")), Format::Yaml);
        assert_eq!(Format::of(std::path::Path::new("r.yaml")), Format::Yaml);
        assert_eq!(Format::of(std::path::Path::new("r.toml")), Format::Toml);
        assert_eq!(Format::of(std::path::Path::new("rules")), Format::Toml);
    }
}
