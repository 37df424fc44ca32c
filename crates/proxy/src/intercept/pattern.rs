//! Name patterns (exact, glob, regex) and JSON pointer edits used by interceptor rules.

use regex::Regex;
use serde_json::Value;

/// A pattern on a method, tool/prompt name, resource URI or session id.
///
/// * `/…/` — a regular expression (unanchored; use `^…$` to anchor);
/// * containing `*` or `?` — a glob (`*` any run of characters, `?` one character), anchored;
/// * anything else — exact.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Equal to this.
    Exact(String),
    /// Glob, compiled to an anchored regex.
    Glob(String, Regex),
    /// Regular expression.
    Regex(Regex),
}

impl Pattern {
    /// Parse a pattern; an invalid regex is an error.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
            let inner = &s[1..s.len() - 1];
            return Regex::new(inner)
                .map(Pattern::Regex)
                .map_err(|e| format!("`{s}` is not a valid regex: {e}"));
        }
        if s.contains(['*', '?']) {
            let mut re = String::from("^");
            for c in s.chars() {
                match c {
                    '*' => re.push_str(".*"),
                    '?' => re.push('.'),
                    c => re.push_str(&regex::escape(&c.to_string())),
                }
            }
            re.push('$');
            return Regex::new(&re)
                .map(|r| Pattern::Glob(s.to_string(), r))
                .map_err(|e| format!("`{s}` is not a valid glob: {e}"));
        }
        Ok(Pattern::Exact(s.to_string()))
    }

    /// Does `s` match?
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == s,
            Pattern::Glob(_, r) | Pattern::Regex(r) => r.is_match(s),
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// A JSON pointer (RFC 6901) split into its unescaped tokens once, so that looking it up in
/// every message allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parse `""` (the whole value) or `/a/b/0`; anything else is an error.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        let tokens = match text {
            "" => Vec::new(),
            t => t
                .strip_prefix('/')
                .ok_or_else(|| format!("pointer `{t}` must start with `/`"))?
                .split('/')
                .map(unescape)
                .collect(),
        };
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value it points at in `root`, if any (same rules as `serde_json::Value::pointer`).
    pub fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(root, |v, tok| match v {
            Value::Object(m) => m.get(tok),
            Value::Array(a) => {
                let canonical = tok == "0" || !(tok.starts_with('0') || tok.starts_with('+'));
                tok.parse::<usize>()
                    .ok()
                    .filter(|_| canonical)
                    .and_then(|i| a.get(i))
            }
            _ => None,
        })
    }
}

/// Set the value at a JSON pointer, creating missing object members on the way. Fails when a
/// step goes through something that is not an object or array, or past an array's end.
pub fn set(root: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    if pointer.is_empty() {
        *root = value;
        return Ok(());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("pointer `{pointer}` must start with `/`"));
    };
    let mut cur = root;
    let tokens: Vec<String> = rest.split('/').map(unescape).collect();
    for (i, tok) in tokens.iter().enumerate() {
        let last = i + 1 == tokens.len();
        cur = match cur {
            Value::Object(m) => {
                if last {
                    m.insert(tok.clone(), value);
                    return Ok(());
                }
                m.entry(tok.clone())
                    .or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(a) => {
                let idx = if tok == "-" {
                    a.len()
                } else {
                    tok.parse::<usize>()
                        .map_err(|_| format!("`{tok}` in `{pointer}` is not an array index"))?
                };
                if last {
                    if idx == a.len() {
                        a.push(value);
                    } else if idx < a.len() {
                        a[idx] = value;
                    } else {
                        return Err(format!("index {idx} in `{pointer}` is past the end"));
                    }
                    return Ok(());
                }
                a.get_mut(idx)
                    .ok_or_else(|| format!("index {idx} in `{pointer}` is past the end"))?
            }
            _ => {
                return Err(format!(
                    "`{pointer}` goes through a value that is not a container"
                ));
            }
        };
    }
    Ok(())
}

/// Remove the value at a JSON pointer (nothing happens when it is not there).
pub fn remove(root: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = unescape(last);
    match root.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns() {
        let p = Pattern::parse("tools/*").unwrap();
        assert!(p.matches("tools/call") && !p.matches("xtools/call"));
        let p = Pattern::parse("/^res.*read$/").unwrap();
        assert!(p.matches("resources/read") && !p.matches("resources/list"));
        let p = Pattern::parse("ping").unwrap();
        assert!(p.matches("ping") && !p.matches("pingx"));
        assert!(Pattern::parse("/(/").is_err());
        assert!(Pattern::parse("a.b?").unwrap().matches("a.bc"));
        assert!(!Pattern::parse("a.b?").unwrap().matches("axbc"));
    }

    #[test]
    fn pointers_find_what_serde_json_finds() {
        let v = json!({"a/b":{"m~n":[10,{"x":null}]},"":1,"list":[0,1]});
        for p in [
            "",
            "/a~1b",
            "/a~1b/m~0n",
            "/a~1b/m~0n/1/x",
            "/a~1b/m~0n/2",
            "/",
            "/list/01",
            "/list/+1",
            "/list/1",
            "/list/-",
            "/missing/x",
            "/a~1b/m~0n/0/deeper",
        ] {
            assert_eq!(Pointer::parse(p).unwrap().get(&v), v.pointer(p), "{p}");
        }
        assert!(Pointer::parse("a/b").is_err());
        assert_eq!(Pointer::parse("/a~1b").unwrap().as_str(), "/a~1b");
    }

    #[test]
    fn pointer_edits() {
        let mut v = json!({"params":{"arguments":{"a":1,"list":[1,2]}}});
        set(&mut v, "/params/arguments/b", json!("x")).unwrap();
        set(&mut v, "/params/new/deep", json!(true)).unwrap();
        set(&mut v, "/params/arguments/list/-", json!(3)).unwrap();
        set(&mut v, "/params/arguments/list/0", json!(0)).unwrap();
        remove(&mut v, "/params/arguments/a");
        assert_eq!(
            v,
            json!({"params":{"arguments":{"b":"x","list":[0,2,3]},"new":{"deep":true}}})
        );
        assert!(set(&mut v, "/params/arguments/b/c", json!(1)).is_err());
        assert!(set(&mut v, "/params/arguments/list/9", json!(1)).is_err());
    }
}
