//! What a composite session keeps in its session record so that another replica can continue
//! it when the one that owns it is gone (the record's `composite` field, as JSON).
//!
//! * the client's `initialize` params: a member that cannot be continued (a stdio child or an
//!   HTTP+SSE stream died with its replica) is started afresh and initialized with them, without
//!   asking the client again;
//! * per member, its name and, for a Streamable HTTP member, the upstream session id it was
//!   issued, the version it negotiated and the capabilities it answered with: the member is
//!   continued with that session (no new `initialize`);
//! * the key the session's list cursors are sealed with (per session, random), so that a cursor
//!   one replica issued opens on another.
//!
//! It is written when the client's `initialize` has been answered and again whenever a member
//! (re)joins (a restarted member has a new upstream session), and read by
//! [`super::CompositeUpstream::resume`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A composite session's state, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The params of the client's `initialize`.
    pub init: Value,
    /// The cursor key: 32 bytes, base64url without padding.
    pub key: String,
    /// The members, in member order.
    pub members: Vec<SavedMember>,
}

/// One member of a recorded composite session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMember {
    /// Its name on the route.
    pub name: String,
    /// The upstream session id a Streamable HTTP member issued (`None`: nothing to continue;
    /// the member starts afresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The protocol version it negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What it answered `initialize` with (`capabilities`).
    #[serde(default)]
    pub capabilities: Value,
    /// The upstream of its set it ran on (its placer's candidate name; `None` in records
    /// written before members had upstream sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl Saved {
    /// The state in a record's `composite` field; `None` (logged) when it is not one.
    pub fn from_record(v: &Value) -> Option<Saved> {
        match serde_json::from_value(v.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "the record's composite state cannot be read");
                None
            }
        }
    }

    /// As a record's `composite` field.
    pub fn to_record(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The cursor key's bytes, if it is a well-formed one.
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        let bytes = URL_SAFE_NO_PAD.decode(&self.key).ok()?;
        <[u8; 32]>::try_from(bytes).ok()
    }

    /// A cursor key as recorded.
    pub fn encode_key(bytes: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The recorded member called `name`.
    pub fn member(&self, name: &str) -> Option<&SavedMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_a_record_field() {
        let key = [9u8; 32];
        let saved = Saved {
            init: json!({"protocolVersion": "2025-06-18", "capabilities": {}}),
            key: Saved::encode_key(&key),
            members: vec![
                SavedMember {
                    name: "web".into(),
                    session: Some("up-1".into()),
                    version: Some("2025-06-18".into()),
                    capabilities: json!({"tools": {}}),
                    upstream: Some("web=http://a/mcp".into()),
                },
                SavedMember {
                    name: "files".into(),
                    session: None,
                    version: None,
                    capabilities: Value::Null,
                    upstream: None,
                },
            ],
        };
        let back = Saved::from_record(&saved.to_record()).expect("readable");
        assert_eq!(back, saved);
        assert_eq!(back.key_bytes(), Some(key));
        assert_eq!(back.member("files").map(|m| m.session.clone()), Some(None));
        assert!(Saved::from_record(&json!({"members": 3})).is_none());
        let short = Saved {
            key: "AAAA".into(),
            ..saved
        };
        assert_eq!(short.key_bytes(), None, "a key of the wrong length");
    }
}
