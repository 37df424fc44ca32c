//! The two handshakes in terms of each other: the `initialize` a held session sends for modern
//! clients and the `server/discover` result built from its answer; the `initialize` result a
//! session-based client gets from a modern server's `server/discover` result.

use super::envelope::Envelope;
use serde_json::{Map, Value, json};
use shadowcat_proto::era::{META_SERVER_INFO, ProtocolVersion};

/// The version a held session asks for: the newest session-based one.
pub const HELD_VERSION: ProtocolVersion = ProtocolVersion::V2025_11_25;

/// The `clientInfo` of a held session: the modern client's own, else the proxy's.
pub fn held_client_info(env: &Envelope) -> Value {
    env.client_info
        .clone()
        .unwrap_or_else(|| json!({"name": "shadowcat", "version": env!("CARGO_PKG_VERSION")}))
}

/// The client capabilities a held session declares: the modern client's, without `roots` (a
/// session-based server asks for roots outside any request, where a 2026-07-28 client cannot
/// be asked) and `tasks` (removed from the core in 2026-07-28). `sampling` and `elicitation`
/// stay: their requests reach the client as multi-round-trip input ([`super::mrtr`]).
pub fn held_capabilities(env: &Envelope) -> Value {
    let mut caps = env.capabilities.as_object().cloned().unwrap_or_default();
    for k in ["roots", "tasks"] {
        caps.remove(k);
    }
    Value::Object(caps)
}

/// The `initialize` params of a held session.
pub fn initialize_params(env: &Envelope) -> Value {
    json!({
        "protocolVersion": HELD_VERSION.as_str(),
        "capabilities": held_capabilities(env),
        "clientInfo": held_client_info(env),
    })
}

/// A `server/discover` result from a held session's `InitializeResult`.
pub fn discover_result(init: &Value) -> Value {
    let mut r = Map::new();
    r.insert(
        "supportedVersions".into(),
        json!([ProtocolVersion::V2026_07_28.as_str()]),
    );
    r.insert(
        "capabilities".into(),
        init.get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    if let Some(i) = init.get("instructions").filter(|v| v.is_string()) {
        r.insert("instructions".into(), i.clone());
    }
    r.insert("resultType".into(), json!("complete"));
    r.insert("ttlMs".into(), json!(0));
    r.insert("cacheScope".into(), json!("private"));
    if let Some(info) = init.get("serverInfo").filter(|v| v.is_object()) {
        r.insert("_meta".into(), json!({ META_SERVER_INFO: info }));
    }
    Value::Object(r)
}

/// The version a session-based client is answered in `initialize`: the one it asked for when
/// this proxy knows it (and it is session-based), else the newest session-based one.
pub fn legacy_version(requested: Option<&str>) -> ProtocolVersion {
    requested
        .and_then(ProtocolVersion::parse)
        .filter(|v| !v.is_modern())
        .unwrap_or(HELD_VERSION)
}

/// An `InitializeResult` for a session-based client from a modern server's `DiscoverResult`.
pub fn initialize_result(discover: &Value, requested: Option<&str>) -> Value {
    let server_info = discover
        .get("_meta")
        .and_then(|m| m.get(META_SERVER_INFO))
        .filter(|v| v.get("name").is_some_and(Value::is_string))
        .cloned()
        .unwrap_or_else(|| json!({"name": "unknown 2026-07-28 server", "version": ""}));
    let mut r = Map::new();
    r.insert(
        "protocolVersion".into(),
        json!(legacy_version(requested).as_str()),
    );
    r.insert(
        "capabilities".into(),
        discover
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    r.insert("serverInfo".into(), server_info);
    if let Some(i) = discover.get("instructions").filter(|v| v.is_string()) {
        r.insert("instructions".into(), i.clone());
    }
    Value::Object(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_sessions_declare_what_can_be_honoured() {
        let env = Envelope {
            capabilities: json!({"sampling":{}, "elicitation":{"form":{}}, "roots":{"listChanged":true}, "experimental":{"x":{}}}),
            client_info: None,
            log_level: None,
        };
        let p = initialize_params(&env);
        assert_eq!(p["protocolVersion"], "2025-11-25");
        assert_eq!(
            p["capabilities"],
            json!({"sampling":{}, "elicitation":{"form":{}}, "experimental":{"x":{}}})
        );
        assert_eq!(p["clientInfo"]["name"], "shadowcat");
    }

    #[test]
    fn discover_from_initialize_and_back() {
        let init = json!({"protocolVersion":"2025-11-25","capabilities":{"tools":{"listChanged":true}},
            "serverInfo":{"name":"s","version":"3"},"instructions":"use it"});
        let d = discover_result(&init);
        assert_eq!(d["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(d["capabilities"], init["capabilities"]);
        assert_eq!(
            d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "s"
        );
        assert_eq!(d["resultType"], "complete");
        let i = initialize_result(&d, Some("2024-11-05"));
        assert_eq!(i["protocolVersion"], "2024-11-05");
        assert_eq!(i["serverInfo"], init["serverInfo"]);
        assert_eq!(i["capabilities"], init["capabilities"]);
        assert_eq!(i["instructions"], "use it");
        let i = initialize_result(
            &json!({"supportedVersions":["2026-07-28"]}),
            Some("2099-01-01"),
        );
        assert_eq!(i["protocolVersion"], "2025-11-25");
        assert_eq!(i["serverInfo"]["name"], "unknown 2026-07-28 server");
        assert_eq!(legacy_version(Some("2026-07-28")), HELD_VERSION);
    }
}
