//! Authorization rules: who (principal, scopes, claims) may use which method on which tool,
//! prompt or resource, per route. Rules are tried in order; the first that matches decides; when
//! none does, the route's `default` decides. `tools/list`, `prompts/list` and `resources/list`
//! answers are filtered by the same rules: an item is listed only if calling it
//! (`tools/call`, `prompts/get`, `resources/read`) would be allowed.

use super::auth::Principal;
use super::config::{Effect, RuleConfig};
use shadowcat_proto::Frame;

/// JSON-RPC error code of a request refused by an authorization rule.
pub const FORBIDDEN: i64 = -32003;

/// What a rule or a list filter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tool (`tools/call`, `tools/list`).
    Tool,
    /// A prompt (`prompts/get`, `prompts/list`).
    Prompt,
    /// A resource, by URI (`resources/read`, `resources/subscribe`, `resources/list`).
    Resource,
}

impl Kind {
    /// The kind a list method lists, and the key of the array in its result.
    pub fn of_list(method: &str) -> Option<(Kind, &'static str)> {
        match method {
            "tools/list" => Some((Kind::Tool, "tools")),
            "prompts/list" => Some((Kind::Prompt, "prompts")),
            "resources/list" => Some((Kind::Resource, "resources")),
            _ => None,
        }
    }

    /// The kind a method acts on, by the name or URI it carries.
    pub fn of_call(method: &str) -> Option<Kind> {
        match method {
            "tools/call" => Some(Kind::Tool),
            "prompts/get" => Some(Kind::Prompt),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Some(Kind::Resource)
            }
            _ => None,
        }
    }

    /// The method that uses an item of this kind.
    pub fn call_method(self) -> &'static str {
        match self {
            Kind::Tool => "tools/call",
            Kind::Prompt => "prompts/get",
            Kind::Resource => "resources/read",
        }
    }

    /// The field naming a listed item.
    pub fn item_key(self) -> &'static str {
        match self {
            Kind::Tool | Kind::Prompt => "name",
            Kind::Resource => "uri",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

/// `*` matches any run of characters (including none); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The rules of one route.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<RuleConfig>,
    default_allow: bool,
}

/// A refusal: the JSON-RPC error code ([`FORBIDDEN`], or `-32602` for a request whose items
/// cannot be read) and the reason given to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// JSON-RPC error code.
    pub code: i64,
    /// What was refused, for whom and why.
    pub message: String,
}

/// The 2026-07-28 request that asks for resource update notifications
/// (`params.notifications.resourceSubscriptions`).
pub const LISTEN: &str = "subscriptions/listen";

impl Rules {
    /// Rules in order, and the decision when none matches.
    pub fn new(rules: Vec<RuleConfig>, default: Effect) -> Self {
        Rules {
            rules,
            default_allow: default == Effect::Allow,
        }
    }

    /// True when nothing can be denied (no rules, default allow): the hook does no work.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.default_allow
    }

    fn subject_matches(rule: &RuleConfig, who: Option<&Principal>) -> bool {
        if !rule.principals.is_empty()
            && !who.is_some_and(|p| rule.principals.iter().any(|g| glob(g, &p.id)))
        {
            return false;
        }
        if !rule.scopes.is_empty() && !who.is_some_and(|p| p.has_scopes(&rule.scopes)) {
            return false;
        }
        rule.claims.iter().all(|(name, want)| {
            who.and_then(|p| p.claims.get(name))
                .is_some_and(|v| match v {
                    serde_json::Value::String(s) => s == want,
                    serde_json::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(want)),
                    serde_json::Value::Bool(b) => want == &b.to_string(),
                    serde_json::Value::Number(n) => want == &n.to_string(),
                    _ => false,
                })
        })
    }

    fn object_matches(rule: &RuleConfig, method: &str, target: Option<(Kind, &str)>) -> bool {
        if !rule.methods.is_empty() && !rule.methods.iter().any(|m| glob(m, method)) {
            return false;
        }
        let names = |k: Kind| match k {
            Kind::Tool => &rule.tools,
            Kind::Prompt => &rule.prompts,
            Kind::Resource => &rule.resources,
        };
        let any_names =
            !(rule.tools.is_empty() && rule.prompts.is_empty() && rule.resources.is_empty());
        if !any_names {
            return true;
        }
        match target {
            Some((k, name)) => names(k).iter().any(|g| glob(g, name)),
            None => false,
        }
    }

    /// Decide a request: `method`, and what it names (for tools/prompts/resources).
    pub fn check(
        &self,
        who: Option<&Principal>,
        method: &str,
        target: Option<(Kind, &str)>,
    ) -> Result<(), Denied> {
        for (i, rule) in self.rules.iter().enumerate() {
            if Self::subject_matches(rule, who) && Self::object_matches(rule, method, target) {
                return match rule.effect {
                    Effect::Allow => Ok(()),
                    Effect::Deny => Err(self.denied(who, method, target, Some(i))),
                };
            }
        }
        if self.default_allow {
            Ok(())
        } else {
            Err(self.denied(who, method, target, None))
        }
    }

    fn denied(
        &self,
        who: Option<&Principal>,
        method: &str,
        target: Option<(Kind, &str)>,
        rule: Option<usize>,
    ) -> Denied {
        let what = match target {
            Some((k, name)) => format!("{} `{name}`", k.word()),
            None => format!("`{method}`"),
        };
        let who = who
            .map(|p| p.id.to_string())
            .unwrap_or_else(|| "anonymous clients".into());
        let why = match rule {
            Some(i) => format!("rule {} of this route denies it", i + 1),
            None => "no rule of this route allows it".to_string(),
        };
        Denied {
            code: FORBIDDEN,
            message: format!("forbidden by the gateway: {what} is not allowed for {who} ({why})"),
        }
    }

    /// Decide a client frame (requests only; everything else passes).
    pub fn check_frame(&self, who: Option<&Principal>, frame: &Frame) -> Result<(), Denied> {
        let Some(method) = frame.method() else {
            return Ok(());
        };
        if frame.id().is_none() {
            return Ok(()); // notifications are not authorised one by one
        }
        let target = Kind::of_call(method).and_then(|k| frame.target().map(|t| (k, t)));
        self.check(who, method, target)?;
        if method == LISTEN {
            // Each URI it subscribes to is checked as the `resources/subscribe` it stands for
            // (the translated path sends exactly that): one denied URI refuses the request.
            let uris = listen_uris(frame).map_err(|message| Denied {
                code: shadowcat_proto::error::INVALID_PARAMS,
                message,
            })?;
            for uri in &uris {
                self.check(who, "resources/subscribe", Some((Kind::Resource, uri)))?;
            }
        }
        Ok(())
    }

    /// Filter a list answer: remove the items the principal may not use. `None` when nothing
    /// was removed (the original frame is forwarded untouched).
    pub fn filter_list(
        &self,
        who: Option<&Principal>,
        kind: Kind,
        key: &str,
        frame: &Frame,
    ) -> Option<Frame> {
        let mut v: serde_json::Value = serde_json::from_slice(frame.raw()).ok()?;
        let items = v.get_mut("result")?.get_mut(key)?.as_array_mut()?;
        let before = items.len();
        items.retain(|item| {
            let name = item
                .get(kind.item_key())
                .and_then(|n| n.as_str())
                .unwrap_or("");
            self.check(who, kind.call_method(), Some((kind, name)))
                .is_ok()
        });
        if items.len() == before {
            return None;
        }
        let bytes = bytes::Bytes::from(serde_json::to_vec(&v).ok()?);
        Frame::parse_single(bytes).ok()
    }
}

/// The URIs of a `subscriptions/listen` request's `params.notifications.resourceSubscriptions`,
/// read strictly (a rule must see what the server will see): every level an object, each field
/// at most once and with no case variant beside it, the list an array of strings. The error
/// says what was wrong.
pub fn listen_uris(frame: &Frame) -> Result<Vec<String>, String> {
    use serde::de::DeserializeSeed;
    let seed = Field {
        name: "params",
        seed: Field {
            name: "notifications",
            seed: Field {
                name: "resourceSubscriptions",
                seed: std::marker::PhantomData::<Vec<String>>,
            },
        },
    };
    let mut de = serde_json::Deserializer::from_slice(frame.raw());
    match seed.deserialize(&mut de) {
        Ok(uris) => Ok(uris.flatten().flatten().unwrap_or_default()),
        Err(e) => {
            let text = e.to_string();
            let text = text.rfind(" at line ").map_or(&*text, |i| &text[..i]);
            Err(format!(
                "`{LISTEN}` params: {text} (`notifications.resourceSubscriptions` must be an \
                 array of URI strings)"
            ))
        }
    }
}

/// One field of a JSON object, read with `seed`: `None` when absent; an error when it is given
/// twice or beside a case variant of its name. Other fields are skipped whatever their type.
struct Field<S> {
    name: &'static str,
    seed: S,
}

impl<'de, S: serde::de::DeserializeSeed<'de>> serde::de::DeserializeSeed<'de> for Field<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: serde::de::DeserializeSeed<'de>> serde::de::Visitor<'de> for Field<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an object holding \"{}\"", self.name)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let name = self.name;
        let mut seed = Some(self.seed);
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == name {
                let Some(s) = seed.take() else {
                    return Err(A::Error::custom(format_args!(
                        "\"{name}\" is given more than once"
                    )));
                };
                found = Some(map.next_value_seed(s)?);
            } else if key.eq_ignore_ascii_case(name) {
                return Err(A::Error::custom(format_args!(
                    "a field spelled like \"{name}\" in other letter case is ambiguous"
                )));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rule(toml_text: &str) -> RuleConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn who(id: &str, scopes: &[&str], claims: serde_json::Value) -> Principal {
        Principal {
            id: Arc::from(id),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: Arc::new(claims.as_object().cloned().unwrap_or_default()),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("delete_*", "delete_repo"));
        assert!(glob("*", ""));
        assert!(glob("file:///a/*/x*", "file:///a/b/c/xyz"));
        assert!(!glob("file:///a/*/x", "file:///a/b/c/xyz"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
        assert!(!glob("echo", "echo2"));
    }

    #[test]
    fn first_matching_rule_decides_then_the_default() {
        let rules = Rules::new(
            vec![
                rule("effect = \"allow\"\nscopes = [\"admin\"]"),
                rule("effect = \"deny\"\ntools = [\"delete_*\"]"),
                rule(
                    "effect = \"deny\"\nmethods = [\"resources/subscribe\"]\nclaims = { tier = \"free\" }",
                ),
            ],
            Effect::Allow,
        );
        let admin = who("jwt:root", &["admin"], serde_json::json!({}));
        let bob = who("jwt:bob", &[], serde_json::json!({"tier": "free"}));
        let t = |n| Some((Kind::Tool, n));
        assert!(
            rules
                .check(Some(&admin), "tools/call", t("delete_repo"))
                .is_ok()
        );
        let e = rules
            .check(Some(&bob), "tools/call", t("delete_repo"))
            .unwrap_err();
        assert_eq!(
            e.message,
            "forbidden by the gateway: tool `delete_repo` is not allowed for jwt:bob (rule 2 of this route denies it)"
        );
        assert!(rules.check(Some(&bob), "tools/call", t("echo")).is_ok());
        let r = Some((Kind::Resource, "demo://counter"));
        assert!(rules.check(Some(&bob), "resources/subscribe", r).is_err());
        assert!(rules.check(Some(&bob), "resources/read", r).is_ok());
        let closed = Rules::new(
            vec![rule("effect = \"allow\"\nprincipals = [\"key:*\"]")],
            Effect::Deny,
        );
        assert!(
            closed
                .check(
                    Some(&who("key:ci", &[], serde_json::json!({}))),
                    "ping",
                    None
                )
                .is_ok()
        );
        assert!(closed.check(None, "ping", None).is_err());
    }

    fn listen(params: &str) -> Frame {
        let raw = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{params}}}"#
        );
        Frame::parse_single(bytes::Bytes::from(raw)).unwrap()
    }

    #[test]
    fn every_uri_a_listen_request_subscribes_to_is_checked() {
        let rules = Rules::new(
            vec![rule("effect = \"deny\"\nresources = [\"secret://*\"]")],
            Effect::Allow,
        );
        let ok = listen(r#"{"notifications":{"resourceSubscriptions":["demo://a","demo://b"]}}"#);
        assert!(rules.check_frame(None, &ok).is_ok());
        let e = rules
            .check_frame(
                None,
                &listen(
                    r#"{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["demo://a","secret://x"]}}"#,
                ),
            )
            .unwrap_err();
        assert_eq!(e.code, FORBIDDEN);
        assert!(e.message.contains("resource `secret://x`"), "{}", e.message);
        // Checked as `resources/subscribe` of the URI.
        let by_method = Rules::new(
            vec![rule(
                "effect = \"deny\"\nmethods = [\"resources/subscribe\"]",
            )],
            Effect::Allow,
        );
        assert!(by_method.check_frame(None, &ok).is_err());
        assert!(
            by_method
                .check_frame(
                    None,
                    &listen(r#"{"notifications":{"toolsListChanged":true}}"#)
                )
                .is_ok(),
            "no URI, nothing subscribed"
        );
        // What cannot be read unambiguously is refused (-32602), whatever the rules say.
        for bad in [
            r#"{"notifications":{"resourceSubscriptions":"secret://x"}}"#,
            r#"{"notifications":{"resourceSubscriptions":[1]}}"#,
            r#"{"notifications":{"resourceSubscriptions":["demo://a"],"resourceSubscriptions":["secret://x"]}}"#,
            r#"{"notifications":{"resourceSubscriptions":["demo://a"],"ResourceSubscriptions":["secret://x"]}}"#,
            r#"{"notifications":{"resourceSubscriptions":[]},"notifications":{"resourceSubscriptions":["secret://x"]}}"#,
            r#"{"notifications":null}"#,
            r#"[]"#,
        ] {
            let e = rules.check_frame(None, &listen(bad)).unwrap_err();
            assert_eq!(e.code, shadowcat_proto::error::INVALID_PARAMS, "{bad}");
            assert!(
                e.message.contains("resourceSubscriptions"),
                "{bad}: {}",
                e.message
            );
        }
        assert_eq!(
            listen_uris(&listen(r#"{"_meta":{},"notifications":{}}"#)).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn lists_are_filtered_by_the_same_rules() {
        let rules = Rules::new(
            vec![rule("effect = \"deny\"\ntools = [\"secret*\"]")],
            Effect::Allow,
        );
        let f = Frame::parse_single(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"echo"},{"name":"secret_x"}],"nextCursor":"c"}}"#,
        ))
        .unwrap();
        let out = rules.filter_list(None, Kind::Tool, "tools", &f).unwrap();
        let v: serde_json::Value = serde_json::from_slice(out.raw()).unwrap();
        assert_eq!(v["result"]["tools"], serde_json::json!([{"name":"echo"}]));
        assert_eq!(v["result"]["nextCursor"], "c");
        assert_eq!(out.id(), f.id());
        let open = Rules::new(vec![], Effect::Allow);
        assert!(open.filter_list(None, Kind::Tool, "tools", &f).is_none());
    }
}
