//! Tool shaping of a composite route's servers (`[routes.servers.tools]`) and virtual servers
//! (a route's `tools = ["github:create_issue", "jira:*"]`): the gateway's implementation of the
//! engine's [`Shaper`] seam.
//!
//! What the client sees of a server's tools: which ones (`allow`/`deny` globs over the server's
//! own names, `hide_annotations`, the route's `tools` list), under which name (`rename`), with
//! which title and description (`describe`), with which parameters (`fixed` parameters are
//! removed from the schema; `defaults` are shown as the schema's `default` and no longer
//! required). What the server gets: its own name, the client's arguments plus the fixed values
//! (a client that sets a fixed parameter itself is refused) and the defaults it left out.
//! A hidden tool is not listed, so it cannot be called by its exposed name, and a call naming
//! it any other way is refused here too (fail closed).

use crate::authz::glob;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use shadowcat_proxy::upstream::composite::Shaper;
use std::collections::{BTreeMap, HashSet};

/// `[routes.servers.tools]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Only tools whose name matches one of these globs (`*` = any run); default: all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// No tool whose name matches one of these globs.
    #[serde(default)]
    pub deny: Vec<String>,
    /// No tool with one of these annotations set to `true` (e.g. `destructiveHint`).
    #[serde(default)]
    pub hide_annotations: Vec<String>,
    /// Listed under another name: the server's name → the name shown.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// A new title and/or description of a tool (by the server's name).
    #[serde(default)]
    pub describe: BTreeMap<String, Describe>,
    /// Parameters the client does not see, with the value the server always gets, per tool.
    #[serde(default)]
    pub fixed: BTreeMap<String, Map<String, Value>>,
    /// Values the server gets for parameters the client leaves out, per tool.
    #[serde(default)]
    pub defaults: BTreeMap<String, Map<String, Value>>,
}

/// `[routes.servers.tools.describe.NAME]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Describe {
    /// The title shown instead.
    #[serde(default)]
    pub title: Option<String>,
    /// The description shown instead.
    #[serde(default)]
    pub description: Option<String>,
}

impl ToolsConfig {
    /// Problems of this section, as (field relative to `tools`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut shown = HashSet::new();
        for (from, to) in &self.rename {
            let valid = !to.is_empty()
                && to.len() <= 64
                && to
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                out.push((
                    format!("rename.{from}"),
                    format!("`{to}` is not a tool name (1 to 64 of A-Z, a-z, 0-9, `_`, `-`)"),
                ));
            }
            if !shown.insert(to.as_str()) {
                out.push((
                    format!("rename.{from}"),
                    format!("`{to}` is the new name of another tool too"),
                ));
            }
        }
        for (tool, fixed) in &self.fixed {
            if let Some(d) = self.defaults.get(tool) {
                for k in fixed.keys().filter(|k| d.contains_key(*k)) {
                    out.push((
                        format!("defaults.{tool}.{k}"),
                        "is fixed for this tool: a default would never apply".into(),
                    ));
                }
            }
        }
        out
    }

    /// Whether nothing is shaped (the server's tools are served as it lists them).
    fn is_empty(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.hide_annotations.is_empty()
            && self.rename.is_empty()
            && self.describe.is_empty()
            && self.fixed.is_empty()
            && self.defaults.is_empty()
    }
}

/// One server's shaping: its `[routes.servers.tools]` and, on a virtual server, the route's
/// `tools` entries for it.
pub struct ToolShape {
    cfg: ToolsConfig,
    /// On a virtual server: only tools matching one of these globs (`None`: no such list).
    only: Option<Vec<String>>,
}

impl ToolShape {
    /// The shaper of server `name`, from its section and the route's `tools` list (entries
    /// `server:glob`); `None` when nothing is shaped.
    pub fn new(name: &str, cfg: Option<&ToolsConfig>, route_tools: &[String]) -> Option<ToolShape> {
        let only = (!route_tools.is_empty()).then(|| {
            route_tools
                .iter()
                .filter_map(|t| t.split_once(':'))
                .filter(|(server, _)| *server == name)
                .map(|(_, g)| g.to_string())
                .collect()
        });
        let cfg = cfg.cloned().unwrap_or_default();
        (only.is_some() || !cfg.is_empty()).then_some(ToolShape { cfg, only })
    }

    /// Whether the server's tool `name` may be seen and called at all.
    fn allowed(&self, name: &str) -> bool {
        let c = &self.cfg;
        (c.allow.is_empty() || c.allow.iter().any(|g| glob(g, name)))
            && !c.deny.iter().any(|g| glob(g, name))
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|g| glob(g, name)))
    }
}

impl Shaper for ToolShape {
    fn list(&self, tool: &Value) -> Option<Value> {
        let name = tool.get("name")?.as_str()?;
        if !self.allowed(name) {
            return None;
        }
        let c = &self.cfg;
        if c.hide_annotations.iter().any(|a| {
            tool.pointer(&format!("/annotations/{a}"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        }) {
            return None;
        }
        let mut t = tool.clone();
        if let Some(new) = c.rename.get(name) {
            t["name"] = json!(new);
        }
        if let Some(d) = c.describe.get(name) {
            if let Some(title) = &d.title {
                t["title"] = json!(title);
            }
            if let Some(desc) = &d.description {
                t["description"] = json!(desc);
            }
        }
        let fixed = c.fixed.get(name);
        let defaults = c.defaults.get(name);
        if fixed.is_some() || defaults.is_some() {
            let schema = t.get_mut("inputSchema").and_then(Value::as_object_mut)?;
            let gone = |k: &str| fixed.is_some_and(|f| f.contains_key(k));
            let optional = |k: &str| gone(k) || defaults.is_some_and(|d| d.contains_key(k));
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                props.retain(|k, _| !gone(k));
                for (k, v) in defaults.into_iter().flatten() {
                    if let Some(p) = props.get_mut(k).and_then(Value::as_object_mut) {
                        p.insert("default".into(), v.clone());
                    }
                }
            }
            if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
                req.retain(|k| !k.as_str().is_some_and(optional));
            }
        }
        Some(t)
    }

    fn call(&self, original: &str, args: &mut Map<String, Value>) -> Result<(), String> {
        if !self.allowed(original) {
            return Err("this tool is not offered on this route".into());
        }
        if let Some(fixed) = self.cfg.fixed.get(original) {
            if let Some(k) = fixed.keys().find(|k| args.contains_key(*k)) {
                return Err(format!("parameter `{k}` is set by the gateway"));
            }
            args.extend(fixed.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (k, v) in self.cfg.defaults.get(original).into_iter().flatten() {
            args.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> ToolsConfig {
        toml::from_str(toml).unwrap()
    }

    fn tool(name: &str) -> Value {
        json!({
            "name": name,
            "description": "d",
            "inputSchema": {"type": "object", "properties": {
                "repo": {"type": "string"}, "title": {"type": "string"}, "labels": {"type": "array"}
            }, "required": ["repo", "title", "labels"]},
            "annotations": {"destructiveHint": name.starts_with("delete")}
        })
    }

    #[test]
    fn allow_deny_annotations_and_the_route_list_hide_tools() {
        let c = cfg(r#"
            allow = ["create_*", "get_*", "delete_*"]
            deny = ["get_secret*"]
            hide_annotations = ["destructiveHint"]
        "#);
        let s = ToolShape::new("gh", Some(&c), &[]).unwrap();
        let shown = |n: &str| s.list(&tool(n)).is_some();
        assert!(shown("create_issue") && shown("get_issue"));
        assert!(!shown("get_secret_key"), "denied");
        assert!(!shown("list_issues"), "not allowed");
        assert!(!shown("delete_repo"), "destructive");
        let mut args = Map::new();
        assert!(
            s.call("list_issues", &mut args).is_err(),
            "fails closed by name too"
        );
        // A virtual server's list narrows it further, per server.
        let route = vec!["gh:create_*".to_string(), "jira:*".to_string()];
        let v = ToolShape::new("gh", Some(&c), &route).unwrap();
        assert!(v.list(&tool("create_issue")).is_some());
        assert!(v.list(&tool("get_issue")).is_none());
        let none = ToolShape::new("other", None, &route).unwrap();
        assert!(
            none.list(&tool("anything")).is_none(),
            "not on the list at all"
        );
        assert!(ToolShape::new("gh", None, &[]).is_none(), "nothing shaped");
    }

    #[test]
    fn renamed_described_fixed_and_defaulted() {
        let c = cfg(r#"
            [rename]
            create_issue = "new_issue"
            [describe.create_issue]
            title = "New issue"
            description = "Files an issue in our repo."
            [fixed.create_issue]
            repo = "org/repo"
            [defaults.create_issue]
            labels = ["triage"]
        "#);
        assert!(c.problems().is_empty());
        let s = ToolShape::new("gh", Some(&c), &[]).unwrap();
        let t = s.list(&tool("create_issue")).unwrap();
        assert_eq!(t["name"], "new_issue");
        assert_eq!(t["title"], "New issue");
        assert_eq!(t["description"], "Files an issue in our repo.");
        let props = t["inputSchema"]["properties"].as_object().unwrap();
        assert!(
            !props.contains_key("repo"),
            "a fixed parameter is not shown"
        );
        assert_eq!(props["labels"]["default"], json!(["triage"]));
        assert_eq!(t["inputSchema"]["required"], json!(["title"]));
        let mut args = Map::new();
        args.insert("title".into(), json!("bug"));
        s.call("create_issue", &mut args).unwrap();
        assert_eq!(
            Value::Object(args),
            json!({"title": "bug", "repo": "org/repo", "labels": ["triage"]})
        );
        let mut smuggled = Map::new();
        smuggled.insert("repo".into(), json!("evil/repo"));
        let e = s.call("create_issue", &mut smuggled).unwrap_err();
        assert!(e.contains("`repo` is set by the gateway"), "{e}");
    }

    #[test]
    fn bad_renames_and_useless_defaults_are_problems() {
        let c = cfg(r#"
            [rename]
            a = "x"
            b = "x"
            c = "no spaces"
            [fixed.t]
            k = 1
            [defaults.t]
            k = 2
        "#);
        let p = c.problems();
        assert!(
            p.iter()
                .any(|(f, m)| f == "rename.b" && m.contains("another tool")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|(f, m)| f == "rename.c" && m.contains("not a tool name")),
            "{p:?}"
        );
        assert!(p.iter().any(|(f, _)| f == "defaults.t.k"), "{p:?}");
    }
}
