//! The 2026-07-28 request envelope and result decorations, removed or added when a message
//! crosses eras. Pure functions on JSON: the only code that re-serialises messages for eras.
//!
//! * A modern request carries `params._meta` keys `io.modelcontextprotocol/protocolVersion`,
//!   `…/clientCapabilities`, `…/clientInfo` and optionally `…/logLevel`; a session-based
//!   server knows the client from `initialize` instead (and the Python SDK refuses requests
//!   that carry the envelope on a legacy session), so [`unwrap_request`] takes them out and
//!   [`wrap_request`] puts them in.
//! * A modern result carries `resultType` (`complete`), the `…/serverInfo` stamp in `_meta`,
//!   and list results (and `server/discover`) the cache hints `ttlMs` and `cacheScope`:
//!   [`modern_answer`] adds what a legacy server did not send, [`legacy_answer`] removes what a
//!   legacy client does not know (some SDKs validate empty results strictly).

use bytes::Bytes;
use serde_json::{Map, Value, json};
use shadowcat_proto::era::{
    META_CLIENT_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL, META_PROTOCOL_VERSION,
    META_SERVER_INFO, ProtocolVersion,
};
use shadowcat_proto::{Frame, FrameKind, RequestId};

/// Methods whose 2026-07-28 results carry the cache hints `ttlMs` and `cacheScope`.
const CACHEABLE: [&str; 5] = [
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "server/discover",
];

/// What a modern request's `_meta` envelope says about its client.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// `clientCapabilities` (an object; `{}` when absent).
    pub capabilities: Value,
    /// `clientInfo`, if sent.
    pub client_info: Option<Value>,
    /// `logLevel`: the request opts in to log messages at or above it.
    pub log_level: Option<String>,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            capabilities: json!({}),
            client_info: None,
            log_level: None,
        }
    }
}

/// A modern request made ready for a session-based server.
#[derive(Debug)]
pub struct Unwrapped {
    /// The request with the new id, without the envelope, with the proxy's progress token.
    pub frame: Frame,
    /// What the envelope said.
    pub envelope: Envelope,
    /// The client's own progress token, if it asked for progress.
    pub progress_token: Option<Value>,
}

/// Why a message could not be translated.
#[derive(Debug, thiserror::Error)]
#[error("cannot translate the message: {0}")]
pub struct TranslateError(String);

fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TranslateError("not a JSON object".into())),
        Err(e) => Err(TranslateError(e.to_string())),
    }
}

fn to_frame(obj: Map<String, Value>) -> Result<Frame, TranslateError> {
    let bytes =
        serde_json::to_vec(&Value::Object(obj)).map_err(|e| TranslateError(e.to_string()))?;
    Frame::parse_single(Bytes::from(bytes)).map_err(|e| TranslateError(e.to_string()))
}

/// The JSON form of an id (its type kept).
pub fn id_value(id: &RequestId) -> Value {
    match id {
        RequestId::Number(n) => json!(n),
        RequestId::String(s) => json!(&**s),
    }
}

/// The `params._meta` object of a request, if it has one.
pub fn request_meta(frame: &Frame) -> Option<Map<String, Value>> {
    #[derive(serde::Deserialize)]
    struct Body {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<Map<String, Value>>,
    }
    serde_json::from_slice::<Body>(frame.raw())
        .ok()?
        .params?
        .meta
}

/// What a modern request's envelope says (defaults for what it does not).
pub fn read_envelope(frame: &Frame) -> Envelope {
    let mut env = Envelope::default();
    let Some(meta) = request_meta(frame) else {
        return env;
    };
    if let Some(c) = meta.get(META_CLIENT_CAPABILITIES).filter(|v| v.is_object()) {
        env.capabilities = c.clone();
    }
    env.client_info = meta
        .get(META_CLIENT_INFO)
        .filter(|v| v.is_object())
        .cloned();
    env.log_level = meta
        .get(META_LOG_LEVEL)
        .and_then(Value::as_str)
        .map(str::to_owned);
    env
}

/// Take the envelope out of a modern request, give it the id `id` and, if the client asked for
/// progress, the progress token `token` (unique within the session, so progress notifications
/// find their request).
pub fn unwrap_request(
    frame: &Frame,
    id: &RequestId,
    token: &Value,
) -> Result<Unwrapped, TranslateError> {
    let mut obj = parse_object(frame.raw())?;
    obj.insert("id".into(), id_value(id));
    let mut progress_token = None;
    if let Some(Value::Object(params)) = obj.get_mut("params")
        && let Some(Value::Object(meta)) = params.get_mut("_meta")
    {
        for k in [
            META_PROTOCOL_VERSION,
            META_CLIENT_CAPABILITIES,
            META_CLIENT_INFO,
            META_LOG_LEVEL,
        ] {
            meta.remove(k);
        }
        if let Some(t) = meta.get_mut("progressToken") {
            progress_token = Some(std::mem::replace(t, token.clone()));
        }
        if meta.is_empty() {
            params.remove("_meta");
        }
    }
    Ok(Unwrapped {
        frame: to_frame(obj)?,
        envelope: read_envelope(frame),
        progress_token,
    })
}

/// The envelope of a request a session-based client sent, for a modern server: `params._meta`
/// gets the version, the client's capabilities and info (from its `initialize`) and, when the
/// client set one with `logging/setLevel`, the log level.
pub fn wrap_request(frame: &Frame, env: &Envelope) -> Result<Bytes, TranslateError> {
    let mut obj = parse_object(frame.raw())?;
    let params = obj
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    if params.is_null() {
        *params = Value::Object(Map::new());
    }
    let Value::Object(params) = params else {
        return Err(TranslateError("`params` is not an object".into()));
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else {
        return Err(TranslateError("`params._meta` is not an object".into()));
    };
    meta.insert(
        META_PROTOCOL_VERSION.into(),
        json!(ProtocolVersion::V2026_07_28.as_str()),
    );
    meta.insert(META_CLIENT_CAPABILITIES.into(), env.capabilities.clone());
    if let Some(info) = &env.client_info {
        meta.insert(META_CLIENT_INFO.into(), info.clone());
    }
    if let Some(level) = &env.log_level {
        meta.insert(META_LOG_LEVEL.into(), json!(level));
    }
    serde_json::to_vec(&Value::Object(obj))
        .map(Bytes::from)
        .map_err(|e| TranslateError(e.to_string()))
}

/// A session-based server's answer made modern: the client's id back and, for results,
/// `resultType`, the `serverInfo` stamp and (list results) the cache hints, unless present.
pub fn modern_answer(
    frame: &Frame,
    client_id: &RequestId,
    method: &str,
    server_info: Option<&Value>,
) -> Result<Frame, TranslateError> {
    let mut obj = parse_object(frame.raw())?;
    obj.insert("id".into(), id_value(client_id));
    if frame.kind() == FrameKind::Response
        && let Some(Value::Object(result)) = obj.get_mut("result")
    {
        decorate_result(result, method, server_info);
    }
    to_frame(obj)
}

/// Add the 2026-07-28 result fields a session-based result lacks.
pub fn decorate_result(result: &mut Map<String, Value>, method: &str, server_info: Option<&Value>) {
    result
        .entry("resultType")
        .or_insert_with(|| json!("complete"));
    if CACHEABLE.contains(&method) {
        result.entry("ttlMs").or_insert_with(|| json!(0));
        result
            .entry("cacheScope")
            .or_insert_with(|| json!("private"));
    }
    if let Some(info) = server_info {
        let meta = result
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.entry(META_SERVER_INFO).or_insert_with(|| info.clone());
        }
    }
}

/// A modern server's answer made fit for a session-based client: `resultType: complete`, the
/// cache hints and the `serverInfo` stamp removed. Other frames pass unchanged.
pub fn legacy_answer(frame: Frame) -> Result<Frame, TranslateError> {
    if frame.kind() != FrameKind::Response {
        return Ok(frame);
    }
    let mut obj = parse_object(frame.raw())?;
    if let Some(Value::Object(result)) = obj.get_mut("result") {
        if result.get("resultType").and_then(Value::as_str) == Some("complete") {
            result.remove("resultType");
        }
        result.remove("ttlMs");
        result.remove("cacheScope");
        if let Some(Value::Object(meta)) = result.get_mut("_meta") {
            meta.remove(META_SERVER_INFO);
            if meta.is_empty() {
                result.remove("_meta");
            }
        }
    }
    to_frame(obj)
}

/// The `resultType` of a response, if it says one.
pub fn result_type(frame: &Frame) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct R {
        result: Option<T>,
    }
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(rename = "resultType")]
        result_type: Option<String>,
    }
    serde_json::from_slice::<R>(frame.raw())
        .ok()?
        .result?
        .result_type
}

/// A progress notification with another progress token.
pub fn with_progress_token(frame: &Frame, token: &Value) -> Result<Frame, TranslateError> {
    let mut obj = parse_object(frame.raw())?;
    if let Some(Value::Object(params)) = obj.get_mut("params") {
        params.insert("progressToken".into(), token.clone());
    }
    to_frame(obj)
}

/// A message with `_meta[key] = value` added to its `params` (or `result`).
pub fn with_meta(frame: &Frame, key: &str, value: Value) -> Result<Frame, TranslateError> {
    let mut obj = parse_object(frame.raw())?;
    let field = if obj.contains_key("result") {
        "result"
    } else {
        "params"
    };
    let body = obj
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(body) = body {
        let meta = body
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.insert(key.into(), value);
        }
    }
    to_frame(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        Frame::parse_single(Bytes::from(v.to_string())).unwrap()
    }

    fn json_of(f: &Frame) -> Value {
        serde_json::from_slice(f.raw()).unwrap()
    }

    #[test]
    fn unwrap_takes_the_envelope_out_and_swaps_id_and_token() {
        let f = frame(
            json!({"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{
            "name":"echo","arguments":{"m":1},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                     "io.modelcontextprotocol/clientCapabilities":{"sampling":{}},
                     "io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},
                     "io.modelcontextprotocol/logLevel":"info",
                     "progressToken":"p","other":true}}}),
        );
        let u = unwrap_request(&f, &RequestId::Number(7), &json!(7)).unwrap();
        assert_eq!(u.frame.id(), Some(&RequestId::Number(7)));
        assert_eq!(u.frame.method(), Some("tools/call"));
        assert_eq!(u.frame.target(), Some("echo"));
        assert_eq!(u.frame.progress_token(), Some(&RequestId::Number(7)));
        let v = json_of(&u.frame);
        assert_eq!(
            v["params"]["_meta"],
            json!({"progressToken": 7, "other": true})
        );
        assert_eq!(u.envelope.capabilities, json!({"sampling":{}}));
        assert_eq!(
            u.envelope.client_info,
            Some(json!({"name":"c","version":"1"}))
        );
        assert_eq!(u.envelope.log_level.as_deref(), Some("info"));
        assert_eq!(u.progress_token, Some(json!("p")));
        assert_eq!(read_envelope(&f), u.envelope);
        // only the envelope: `_meta` goes entirely
        let f = frame(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}),
        );
        let u = unwrap_request(&f, &RequestId::Number(2), &json!(2)).unwrap();
        assert_eq!(json_of(&u.frame)["params"], json!({}));
        assert_eq!(u.progress_token, None);
    }

    #[test]
    fn wrap_adds_the_envelope() {
        let env = Envelope {
            capabilities: json!({"roots":{}}),
            client_info: Some(json!({"name":"x","version":"2"})),
            log_level: Some("debug".into()),
        };
        for f in [
            frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})),
            frame(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":null})),
            frame(
                json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":3}}}),
            ),
        ] {
            let v: Value = serde_json::from_slice(&wrap_request(&f, &env).unwrap()).unwrap();
            let meta = &v["params"]["_meta"];
            assert_eq!(
                meta["io.modelcontextprotocol/protocolVersion"],
                "2026-07-28"
            );
            assert_eq!(
                meta["io.modelcontextprotocol/clientCapabilities"],
                json!({"roots":{}})
            );
            assert_eq!(meta["io.modelcontextprotocol/clientInfo"]["name"], "x");
            assert_eq!(meta["io.modelcontextprotocol/logLevel"], "debug");
            assert_eq!(v["id"], json!(1));
        }
        let bad = frame(json!({"jsonrpc":"2.0","id":1,"method":"x","params":[1]}));
        assert!(wrap_request(&bad, &env).is_err());
    }

    #[test]
    fn answers_are_decorated_and_stripped() {
        let info = json!({"name":"srv","version":"1"});
        let r = frame(json!({"jsonrpc":"2.0","id":9,"result":{"tools":[]}}));
        let m = modern_answer(
            &r,
            &RequestId::String("a".into()),
            "tools/list",
            Some(&info),
        )
        .unwrap();
        let v = json_of(&m);
        assert_eq!(v["id"], "a");
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["result"]["ttlMs"], 0);
        assert_eq!(v["result"]["cacheScope"], "private");
        assert_eq!(
            v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"],
            info
        );
        let back = legacy_answer(m).unwrap();
        assert_eq!(json_of(&back)["result"], json!({"tools": []}));
        // calls get no cache hints; errors keep their body
        let r = frame(json!({"jsonrpc":"2.0","id":9,"result":{"content":[]}}));
        let v = json_of(&modern_answer(&r, &RequestId::Number(1), "tools/call", None).unwrap());
        assert_eq!(
            v["result"],
            json!({"content": [], "resultType": "complete"})
        );
        let e = frame(json!({"jsonrpc":"2.0","id":9,"error":{"code":-32601,"message":"m"}}));
        let v = json_of(&modern_answer(&e, &RequestId::Number(1), "x", Some(&info)).unwrap());
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"m"}})
        );
        let ir = frame(
            json!({"jsonrpc":"2.0","id":9,"result":{"resultType":"input_required","requestState":"s"}}),
        );
        assert_eq!(result_type(&ir).as_deref(), Some("input_required"));
        assert_eq!(
            json_of(&legacy_answer(ir).unwrap())["result"]["resultType"],
            "input_required"
        );
    }

    #[test]
    fn progress_tokens_and_meta_keys() {
        let p = frame(
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}),
        );
        let back = with_progress_token(&p, &json!("client")).unwrap();
        assert_eq!(
            back.progress_token(),
            Some(&RequestId::String("client".into()))
        );
        let n = with_meta(&p, "k", json!(1)).unwrap();
        assert_eq!(json_of(&n)["params"]["_meta"]["k"], 1);
        let r = frame(json!({"jsonrpc":"2.0","id":1,"result":{}}));
        assert_eq!(
            json_of(&with_meta(&r, "k", json!(2)).unwrap())["result"]["_meta"]["k"],
            2
        );
    }
}
