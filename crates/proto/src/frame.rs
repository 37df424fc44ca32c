//! One JSON-RPC message as received: the raw bytes plus an envelope parsed once.
//!
//! The proxy forwards `raw` byte-for-byte; `params`, `result` and unknown fields are never
//! re-serialised. Only the envelope (kind, id, method, and the tool/resource/prompt name) and the
//! few routing hints (progress token, cancelled request id) are extracted, in one pass.

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// A JSON-RPC id. MCP ids are strings or integers; the JSON type is kept (`0` is not `"0"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestId {
    /// An integer id.
    Number(i64),
    /// A string id.
    String(Arc<str>),
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestId::Number(n) => s.serialize_i64(*n),
            RequestId::String(v) => s.serialize_str(v),
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::String(v) => write!(f, "{v:?}"),
        }
    }
}

/// Borrowed form used while parsing.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr<'a> {
    Int(i64),
    #[serde(borrow)]
    Str(Cow<'a, str>),
    Other(IgnoredAny),
}

impl IdRepr<'_> {
    fn into_id(self) -> Result<RequestId, FrameError> {
        match self {
            IdRepr::Int(n) => Ok(RequestId::Number(n)),
            IdRepr::Str(s) => Ok(RequestId::String(Arc::from(s.as_ref()))),
            IdRepr::Other(_) => Err(FrameError::Invalid(
                "\"id\" must be a string or an integer".into(),
            )),
        }
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result`.
    Response,
    /// Has `id` (possibly null) and `error`.
    Error,
}

impl FrameKind {
    /// Responses and errors answer a request.
    pub fn is_reply(self) -> bool {
        matches!(self, FrameKind::Response | FrameKind::Error)
    }
}

/// Why bytes are not a valid JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON at all (JSON-RPC -32700).
    #[error("invalid JSON: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message (JSON-RPC -32600).
    #[error("invalid JSON-RPC message: {0}")]
    Invalid(String),
    /// A request or notification that acts on a named tool, prompt or resource (`tools/call`,
    /// `prompts/get`, `resources/read`, `resources/subscribe`, `resources/unsubscribe`) whose
    /// name or URI cannot be read unambiguously (JSON-RPC -32602). Such a message is refused
    /// rather than relayed: a rule that cannot see the name must not be skipped while the server,
    /// reading the same bytes its own way, runs the call.
    #[error("invalid params: {message}")]
    InvalidParams {
        /// The id of the refused request (`None` for a notification).
        id: Option<RequestId>,
        /// What was wrong.
        message: String,
    },
    /// Larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size seen (at least).
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

impl FrameError {
    /// The JSON-RPC error code for this failure.
    pub fn code(&self) -> i64 {
        match self {
            FrameError::Parse(_) => crate::error::PARSE_ERROR,
            FrameError::Invalid(_) | FrameError::TooLarge { .. } => crate::error::INVALID_REQUEST,
            FrameError::InvalidParams { .. } => crate::error::INVALID_PARAMS,
        }
    }

    /// The id of the request this error answers, where it is known (only for
    /// [`FrameError::InvalidParams`]: every other failure means the id could not be trusted).
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            FrameError::InvalidParams { id, .. } => id.as_ref(),
            _ => None,
        }
    }
}

/// The `params` field that names what a method acts on: `name` for `tools/call` and
/// `prompts/get`, `uri` for `resources/read`, `resources/subscribe` and `resources/unsubscribe`.
/// Every rule that matches a tool, prompt or resource relies on it; a message with one of these
/// methods is only accepted when this field is read unambiguously.
pub fn target_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<IdRepr<'a>>,
}

#[derive(Deserialize)]
struct ParamsLite<'a> {
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<Meta<'a>>,
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<IdRepr<'a>>,
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<IdRepr<'a>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<Option<IdRepr<'a>>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    /// Present (even as `null`: JSON-RPC lets a method's result be any value) or not.
    #[serde(default, deserialize_with = "present")]
    result: Option<Option<IgnoredAny>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// Distinguishes `"id": null` (Some(None)) from a missing id (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// How a key of `params` relates to the field that names the target.
enum TargetKey {
    /// Exactly the field.
    Exact,
    /// The field in other letter case (`Name`, `URI`): some servers' JSON decoders match
    /// field names case-insensitively, so such a key could name the target for them.
    CaseVariant,
    /// Anything else (ignored, whatever its value).
    Other,
}

struct TargetKeySeed(&'static str);

impl<'de> serde::de::DeserializeSeed<'de> for TargetKeySeed {
    type Value = TargetKey;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<TargetKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for TargetKeySeed {
    type Value = TargetKey;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<TargetKey, E> {
        Ok(if k == self.0 {
            TargetKey::Exact
        } else if k.eq_ignore_ascii_case(self.0) {
            TargetKey::CaseVariant
        } else {
            TargetKey::Other
        })
    }
}

/// Reads the target field (`name` or `uri`) out of `params`, strictly: `params` must be an
/// object holding the field exactly once, as a string, with no case variant of it beside;
/// every other field is skipped whatever its type. The error says what was wrong.
struct TargetSeed(&'static str);

impl<'de> serde::de::DeserializeSeed<'de> for TargetSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TargetSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let field = self.0;
        let mut found: Option<Cow<'de, str>> = None;
        while let Some(key) = map.next_key_seed(TargetKeySeed(field))? {
            match key {
                TargetKey::Exact => {
                    if found.is_some() {
                        return Err(A::Error::custom(format_args!(
                            "\"{field}\" is given more than once"
                        )));
                    }
                    let v: Cow<'de, str> = map
                        .next_value::<BorrowedStr<'de>>()
                        .map_err(|_| {
                            A::Error::custom(format_args!("\"{field}\" must be a string"))
                        })?
                        .0;
                    found = Some(v);
                }
                TargetKey::CaseVariant => {
                    return Err(A::Error::custom(format_args!(
                        "a field spelled like \"{field}\" in other letter case is ambiguous"
                    )));
                }
                TargetKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        found.ok_or_else(|| A::Error::custom(format_args!("\"{field}\" (a string) is missing")))
    }
}

/// The raw JSON value of the target field in `params` (borrowed from the input), for
/// [`Frame::with_target`]; `params` passed [`TargetSeed`] already, so the field is there once.
struct RawTargetSeed(&'static str);

impl<'de> serde::de::DeserializeSeed<'de> for RawTargetSeed {
    type Value = Option<&'de RawValue>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RawTargetSeed {
    type Value = Option<&'de RawValue>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key_seed(TargetKeySeed(self.0))? {
            match key {
                TargetKey::Exact => found = Some(map.next_value::<&'de RawValue>()?),
                TargetKey::CaseVariant | TargetKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// A string, borrowed from the input where it has no escapes.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<'de, str>::deserialize(d).map(BorrowedStr)
    }
}

/// The target of a message whose method names one (see [`target_field`]), or why it cannot be
/// read.
fn strict_target(
    method: &str,
    field: &'static str,
    params: Option<&RawValue>,
) -> Result<Arc<str>, String> {
    use serde::de::DeserializeSeed;
    let Some(params) = params.filter(|p| p.get().trim_start().starts_with('{')) else {
        return Err(format!(
            "`{method}` needs \"params\" to be an object with \"{field}\" (a string)"
        ));
    };
    let mut de = serde_json::Deserializer::from_str(params.get());
    match TargetSeed(field).deserialize(&mut de) {
        Ok(v) => Ok(Arc::from(v.as_ref())),
        Err(e) => {
            // serde_json appends " at line L column C"; the message without it reads better.
            let text = e.to_string();
            let text = match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            Err(format!("`{method}` params: {text}"))
        }
    }
}

/// Routing hints pulled out of `params` during the single parse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Hints {
    /// `params.name` (tools/call, prompts/get) or `params.uri` (resources/read).
    target: Option<Arc<str>>,
    /// `params._meta.progressToken` of a request, or `params.progressToken` of a progress notification.
    progress_token: Option<RequestId>,
    /// `params.requestId` of `notifications/cancelled`.
    cancelled_id: Option<RequestId>,
    /// The error code of an error response the proxy made itself (never set by parsing).
    proxy_error: Option<i64>,
}

/// One JSON-RPC message: raw bytes + parsed envelope.
#[derive(Debug, Clone)]
pub struct Frame {
    raw: Bytes,
    kind: FrameKind,
    id: Option<RequestId>,
    method: Option<Arc<str>>,
    hints: Box<Hints>,
}

/// A parsed HTTP body or stdio line: one message or a 2025-03-26 batch.
#[derive(Debug, Clone)]
pub enum Message {
    /// A single JSON-RPC message.
    Single(Frame),
    /// A JSON-RPC batch (array); each element keeps its own raw bytes.
    Batch(Vec<Frame>),
}

impl Message {
    /// Parse a body that may be a single message or a batch.
    pub fn parse(raw: Bytes) -> Result<Message, FrameError> {
        let first = raw.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let items: Vec<&RawValue> =
                serde_json::from_slice(&raw).map_err(|e| classify(&raw, e))?;
            if items.is_empty() {
                return Err(FrameError::Invalid("empty batch".into()));
            }
            let base = raw.as_ptr() as usize;
            let mut frames = Vec::with_capacity(items.len());
            for item in items {
                let text = item.get();
                let start = text.as_ptr() as usize - base;
                let slice = raw.slice(start..start + text.len());
                frames.push(Frame::parse_single(slice)?);
            }
            Ok(Message::Batch(frames))
        } else {
            Frame::parse_single(raw).map(Message::Single)
        }
    }

    /// The frames of this message, in order.
    pub fn frames(&self) -> &[Frame] {
        match self {
            Message::Single(f) => std::slice::from_ref(f),
            Message::Batch(v) => v,
        }
    }

    /// Consume into the frames, in order.
    pub fn into_frames(self) -> Vec<Frame> {
        match self {
            Message::Single(f) => vec![f],
            Message::Batch(v) => v,
        }
    }

    /// True for a batch.
    pub fn is_batch(&self) -> bool {
        matches!(self, Message::Batch(_))
    }
}

/// A serde error on syntactically broken input is a parse error; on well-formed JSON of the wrong
/// shape it is an invalid request.
fn classify(raw: &[u8], e: serde_json::Error) -> FrameError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => FrameError::Parse(e.to_string()),
        Category::Data => {
            if serde_json::from_slice::<IgnoredAny>(raw).is_ok() {
                FrameError::Invalid(e.to_string())
            } else {
                FrameError::Parse(e.to_string())
            }
        }
    }
}

impl Frame {
    /// Parse exactly one JSON-RPC message (not a batch).
    pub fn parse_single(raw: Bytes) -> Result<Frame, FrameError> {
        let first = raw.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            Some(b'{') => {}
            Some(b'[') => return Err(FrameError::Invalid("a batch is not allowed here".into())),
            None => return Err(FrameError::Parse("empty message".into())),
            Some(_) => {
                // Let serde tell whether it is valid JSON of the wrong type or not JSON at all.
                return Err(match serde_json::from_slice::<IgnoredAny>(&raw) {
                    Ok(_) => FrameError::Invalid("a JSON-RPC message must be a JSON object".into()),
                    Err(e) => FrameError::Parse(e.to_string()),
                });
            }
        }
        let env: Envelope<'_> = serde_json::from_slice(&raw).map_err(|e| classify(&raw, e))?;
        if env.jsonrpc.as_deref() != Some("2.0") {
            return Err(FrameError::Invalid("\"jsonrpc\" must be \"2.0\"".into()));
        }
        let (kind, id) = match (&env.method, env.id) {
            (Some(_), None) => (FrameKind::Notification, None),
            (Some(_), Some(None)) => {
                return Err(FrameError::Invalid("a request id must not be null".into()));
            }
            (Some(_), Some(Some(id))) => (FrameKind::Request, Some(id.into_id()?)),
            (None, id) => {
                let kind = match (env.result.is_some(), env.error.is_some()) {
                    (true, false) => FrameKind::Response,
                    (false, true) => FrameKind::Error,
                    (true, true) => {
                        return Err(FrameError::Invalid(
                            "a response must not have both \"result\" and \"error\"".into(),
                        ));
                    }
                    (false, false) => {
                        return Err(FrameError::Invalid(
                            "a message needs \"method\" (request/notification) or \"result\"/\"error\" (response)"
                                .into(),
                        ));
                    }
                };
                let id = match id {
                    Some(Some(id)) => Some(id.into_id()?),
                    Some(None) if kind == FrameKind::Error => None,
                    _ => {
                        return Err(FrameError::Invalid("a response needs an \"id\"".into()));
                    }
                };
                (kind, id)
            }
        };
        let method = env.method.as_deref().map(Arc::from);
        let mut hints = Hints::default();
        // The name a rule matches on is not best effort: a message that acts on a tool, prompt
        // or resource and does not name it unambiguously is refused here, for every front.
        if let Some(m) = method.as_deref()
            && let Some(field) = target_field(m)
        {
            match strict_target(m, field, env.params) {
                Ok(t) => hints.target = Some(t),
                Err(message) => return Err(FrameError::InvalidParams { id, message }),
            }
        }
        // The other hints are best effort: params of an unexpected shape carry none, they are
        // not an error (they only route progress and cancellation).
        let lite = env
            .params
            .filter(|p| p.get().starts_with('{'))
            .and_then(|p| serde_json::from_str::<ParamsLite<'_>>(p.get()).ok());
        if let Some(p) = lite {
            let m = method.as_deref().unwrap_or("");
            let token = match kind {
                FrameKind::Request => p.meta.and_then(|m| m.progress_token),
                _ if m == "notifications/progress" => p.progress_token,
                _ => None,
            };
            hints.progress_token = token.and_then(|t| t.into_id().ok());
            if m == "notifications/cancelled" {
                hints.cancelled_id = p.request_id.and_then(|t| t.into_id().ok());
            }
        }
        Ok(Frame {
            raw,
            kind,
            id,
            method,
            hints: Box::new(hints),
        })
    }

    /// Build a frame for an error response the proxy produced itself (bytes known to be valid).
    pub(crate) fn from_trusted_error(raw: Bytes, id: Option<RequestId>, code: i64) -> Frame {
        Frame {
            raw,
            kind: FrameKind::Error,
            id,
            method: None,
            hints: Box::new(Hints {
                proxy_error: Some(code),
                ..Hints::default()
            }),
        }
    }

    /// The exact bytes received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    /// Consume into the raw bytes.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }
    /// Request, notification, response or error.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }
    /// The JSON-RPC id (None for notifications and for errors with a null id).
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }
    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }
    /// Tool or prompt name (`tools/call`, `prompts/get`) or resource URI (`resources/read`, subscribe).
    pub fn target(&self) -> Option<&str> {
        self.hints.target.as_deref()
    }
    /// The progress token a request asked for, or the one a progress notification reports.
    pub fn progress_token(&self) -> Option<&RequestId> {
        self.hints.progress_token.as_ref()
    }
    /// For `notifications/cancelled`: the id of the cancelled request.
    pub fn cancelled_id(&self) -> Option<&RequestId> {
        self.hints.cancelled_id.as_ref()
    }
    /// The code of an error response this process made itself (`None` for every frame that
    /// was received, whatever it says).
    pub fn proxy_error(&self) -> Option<i64> {
        self.hints.proxy_error
    }
    /// True for `initialize` requests.
    pub fn is_initialize(&self) -> bool {
        self.kind == FrameKind::Request && self.method() == Some("initialize")
    }

    /// This message naming `target` instead of its own [`Frame::target`] (`params.name` of
    /// `tools/call` and `prompts/get`, `params.uri` of `resources/read`…), every other byte as
    /// it was: the arguments are carried, not parsed. The value is found by borrowing it from
    /// the message's bytes and replaced in place by `target` written as a JSON string, so the
    /// result is the same valid message and is not parsed again (a composite route restores a
    /// member's own tool name on every call this way). `None` for a message without a target.
    pub fn with_target(&self, target: &str) -> Option<Frame> {
        use serde::de::DeserializeSeed;
        #[derive(Deserialize)]
        struct Top<'a> {
            #[serde(borrow)]
            params: &'a RawValue,
        }
        self.hints.target.as_ref()?;
        let field = target_field(self.method()?)?;
        let raw = &self.raw;
        let top: Top<'_> = serde_json::from_slice(raw).ok()?;
        let mut de = serde_json::Deserializer::from_str(top.params.get());
        let old = RawTargetSeed(field)
            .deserialize(&mut de)
            .ok()??
            .get()
            .as_bytes();
        // Where the value sits in the message's bytes (it was borrowed from them).
        let start = (old.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
        let end = start.checked_add(old.len())?;
        if raw.get(start..end)? != old {
            return None;
        }
        let quoted = serde_json::to_string(target).ok()?;
        let mut bytes = Vec::with_capacity(raw.len() - old.len() + quoted.len());
        bytes.extend_from_slice(&raw[..start]);
        bytes.extend_from_slice(quoted.as_bytes());
        bytes.extend_from_slice(&raw[end..]);
        Some(Frame {
            raw: Bytes::from(bytes),
            kind: self.kind,
            id: self.id.clone(),
            method: self.method.clone(),
            hints: Box::new(Hints {
                target: Some(Arc::from(target)),
                ..(*self.hints).clone()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Frame, FrameError> {
        Frame::parse_single(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn with_target_changes_only_the_target() {
        // Arguments (with keys called `name`, odd spacing, escapes) are carried byte for byte.
        let f = p(r#"{"jsonrpc":"2.0", "id":7,"method":"tools/call","params":{ "arguments":{"name":"keep \"me\"","n":{"name":1}} ,"name" : "a\u005f_echo","_meta":{"progressToken":3}}}"#).unwrap();
        assert_eq!(f.target(), Some("a__echo"));
        let r = f.with_target("echo").unwrap();
        assert_eq!(
            std::str::from_utf8(r.raw()).unwrap(),
            r#"{"jsonrpc":"2.0", "id":7,"method":"tools/call","params":{ "arguments":{"name":"keep \"me\"","n":{"name":1}} ,"name" : "echo","_meta":{"progressToken":3}}}"#
        );
        // The result is what parsing its bytes gives.
        let again = p(std::str::from_utf8(r.raw()).unwrap()).unwrap();
        assert_eq!(r.target(), Some("echo"));
        assert_eq!(
            (r.kind(), r.id(), r.method(), r.target(), r.progress_token()),
            (
                again.kind(),
                again.id(),
                again.method(),
                again.target(),
                again.progress_token()
            )
        );
        // A name that needs escaping is written as a JSON string.
        let r = f.with_target("say \"hi\"").unwrap();
        assert_eq!(r.target(), Some("say \"hi\""));
        assert_eq!(
            p(std::str::from_utf8(r.raw()).unwrap()).unwrap().target(),
            Some("say \"hi\"")
        );
        // A resource's URI; a message without a target has nothing to change.
        let f = p(r#"{"jsonrpc":"2.0","id":"x","method":"resources/read","params":{"uri":"a+file:///x"}}"#).unwrap();
        let r = f.with_target("file:///x").unwrap();
        assert_eq!(
            std::str::from_utf8(r.raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":"x","method":"resources/read","params":{"uri":"file:///x"}}"#
        );
        assert!(
            p(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                .unwrap()
                .with_target("x")
                .is_none()
        );
    }

    #[test]
    fn kinds_and_ids_keep_their_type() {
        let r = p(r#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#).unwrap();
        assert_eq!(r.kind(), FrameKind::Request);
        assert_eq!(r.id(), Some(&RequestId::Number(0)));
        let r = p(r#"{"jsonrpc":"2.0","id":"0","method":"ping"}"#).unwrap();
        assert_eq!(r.id(), Some(&RequestId::String("0".into())));
        assert_ne!(RequestId::Number(0), RequestId::String("0".into()));
        let n = p(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind(), FrameKind::Notification);
        assert_eq!(n.id(), None);
        let ok = p(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#).unwrap();
        assert_eq!(ok.kind(), FrameKind::Response);
        let e = p(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).unwrap();
        assert_eq!(e.kind(), FrameKind::Error);
        assert_eq!(e.id(), None);
    }

    #[test]
    fn names_uris_and_progress_hints() {
        let f = p(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"name":"no"},"_meta":{"progressToken":"t1"}}}"#).unwrap();
        assert_eq!(f.target(), Some("echo"));
        assert_eq!(f.progress_token(), Some(&RequestId::String("t1".into())));
        let f =
            p(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"demo://x"}}"#)
                .unwrap();
        assert_eq!(f.target(), Some("demo://x"));
        let f = p(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":5,"progress":1}}"#).unwrap();
        assert_eq!(f.progress_token(), Some(&RequestId::Number(5)));
        let f =
            p(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a"}}"#)
                .unwrap();
        assert_eq!(f.cancelled_id(), Some(&RequestId::String("a".into())));
        let f =
            p(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"x"}}"#).unwrap();
        assert_eq!(f.target(), None);
        // params that are an array are allowed by JSON-RPC and simply carry no hints
        let f = p(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1,2]}"#).unwrap();
        assert_eq!(f.target(), None);
    }

    #[test]
    fn a_named_call_must_name_its_target_unambiguously() {
        let invalid = |s: &str| match p(s) {
            Err(e @ FrameError::InvalidParams { .. }) => {
                assert_eq!(e.code(), -32602, "{s}");
                e
            }
            other => panic!("{s}: expected invalid params, got {other:?}"),
        };
        // A sibling field of an unexpected type no longer hides the name...
        let f = p(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm","uri":1,"_meta":5,"progressToken":[]}}"#).unwrap();
        assert_eq!(f.target(), Some("rm"));
        let f = p(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":{},"uri":"file:///x"}}"#).unwrap();
        assert_eq!(f.target(), Some("file:///x"));
        // ... an escaped name is read as the server reads it ...
        let f = p(
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"n\u0061me":"r\u006d"}}"#,
        )
        .unwrap();
        assert_eq!(f.target(), Some("rm"));
        // ... and a name that cannot be read is refused, with the request's id and a reason.
        let e = invalid(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":5}}"#);
        assert_eq!(e.id(), Some(&RequestId::Number(7)));
        assert!(e.to_string().contains("\"name\" must be a string"), "{e}");
        let e = invalid(
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"arguments":{}}}"#,
        );
        assert_eq!(e.id(), Some(&RequestId::String("a".into())));
        assert!(e.to_string().contains("missing"), "{e}");
        let e = invalid(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","name":"rm"}}"#,
        );
        assert!(e.to_string().contains("more than once"), "{e}");
        let e = invalid(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","Name":"rm"}}"#,
        );
        assert!(e.to_string().contains("letter case"), "{e}");
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#);
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["rm"]}"#);
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}"#);
        invalid(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":["x"]}}"#);
        for m in [
            "resources/read",
            "resources/subscribe",
            "resources/unsubscribe",
        ] {
            let e = invalid(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{m}","params":{{"uri":1}}}}"#
            ));
            assert!(e.to_string().contains(m), "{e}");
        }
        // A notification with such a method is refused too (no id to answer).
        let e = invalid(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":1}}"#);
        assert_eq!(e.id(), None);
        // In a batch, the whole batch is refused.
        let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":1}}]"#;
        let e = Message::parse(Bytes::copy_from_slice(batch.as_bytes())).unwrap_err();
        assert_eq!((e.code(), e.id()), (-32602, Some(&RequestId::Number(2))));
        // Other methods keep their params unchecked.
        let f = p(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":1}}"#).unwrap();
        assert_eq!(f.target(), None);
        assert_eq!(FrameError::Parse(String::new()).id(), None);
    }

    #[test]
    fn raw_bytes_are_kept_exactly() {
        let text = r#"{ "jsonrpc" : "2.0", "id": 9, "method":"x", "params": {"future": [1.50, "\u00e9"]} }"#;
        let f = p(text).unwrap();
        assert_eq!(&f.raw()[..], text.as_bytes());
    }

    #[test]
    fn invalid_messages_are_classified() {
        assert!(matches!(p("{not json"), Err(FrameError::Parse(_))));
        assert!(matches!(p(""), Err(FrameError::Parse(_))));
        assert!(matches!(p("42"), Err(FrameError::Invalid(_))));
        assert!(matches!(
            p(r#"{"id":1,"method":"x"}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","id":1}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","result":{}}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","id":1,"method":5}"#),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            p(r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#),
            Err(FrameError::Invalid(_))
        ));
        assert_eq!(FrameError::Parse(String::new()).code(), -32700);
        assert_eq!(FrameError::Invalid(String::new()).code(), -32600);
    }

    /// Found by `props::valid_message_round_trips`: a `null` result was taken for a missing
    /// one, so a server's reply with it was refused as "needs method or result/error".
    #[test]
    fn a_null_result_is_a_response() {
        let r = p(r#"{"jsonrpc":"2.0","id":0,"result":null}"#).unwrap();
        assert_eq!(r.kind(), FrameKind::Response);
        assert_eq!(r.id(), Some(&RequestId::Number(0)));
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","id":0,"result":null,"error":{"code":1,"message":"x"}}"#),
            Err(FrameError::Invalid(_))
        ));
        // An error must still be an error object, not null.
        assert!(matches!(
            p(r#"{"jsonrpc":"2.0","id":0,"error":null}"#),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn batches_split_into_zero_copy_frames() {
        let text = r#"[{"jsonrpc":"2.0","id":1,"method":"a"}, {"jsonrpc":"2.0","method":"b"} ]"#;
        let m = Message::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap();
        assert!(m.is_batch());
        let frames = m.frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            &frames[0].raw()[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"a"}"#
        );
        assert_eq!(frames[1].kind(), FrameKind::Notification);
        assert!(matches!(
            Message::parse(Bytes::from_static(b"[]")),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            Message::parse(Bytes::from_static(b"[1]")),
            Err(FrameError::Invalid(_))
        ));
        assert!(matches!(
            Message::parse(Bytes::from_static(b"[{")),
            Err(FrameError::Parse(_))
        ));
        let single = Message::parse(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"x","method":"a"}"#,
        ))
        .unwrap();
        assert!(!single.is_batch());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{Map, Value, json};

        /// Any JSON value, nested a few levels.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        fn id_strategy() -> impl Strategy<Value = RequestId> {
            prop_oneof![
                any::<i64>().prop_map(RequestId::Number),
                any::<String>().prop_map(|s| RequestId::String(s.into())),
                // Digits as a string: must stay a string.
                any::<i64>().prop_map(|n| RequestId::String(n.to_string().into())),
            ]
        }

        fn id_json(id: &RequestId) -> Value {
            serde_json::to_value(id).unwrap()
        }

        /// A valid message of each kind: (its JSON, expected kind, expected id).
        fn message() -> impl Strategy<Value = (Value, FrameKind, Option<RequestId>)> {
            // Methods that name no target (those that do are generated with their name).
            let method = "[a-z]{1,8}(/[a-zA-Z_]{1,8}){0,2}"
                .prop_filter("no target field", |m| target_field(m).is_none());
            prop_oneof![
                (
                    id_strategy(),
                    method.clone(),
                    prop::option::of(json_value())
                )
                    .prop_map(|(id, m, params)| {
                        let mut v = json!({"jsonrpc": "2.0", "id": id_json(&id), "method": m});
                        if let Some(params) = params {
                            v["params"] = params;
                        }
                        (v, FrameKind::Request, Some(id))
                    }),
                (id_strategy(), any::<String>(), json_value()).prop_map(|(id, name, args)| {
                    let v = json!({"jsonrpc": "2.0", "id": id_json(&id), "method": "tools/call",
                        "params": {"name": name, "arguments": args}});
                    (v, FrameKind::Request, Some(id))
                }),
                (method, json_value()).prop_map(|(m, params)| {
                    let v = json!({"jsonrpc": "2.0", "method": m, "params": params});
                    (v, FrameKind::Notification, None)
                }),
                (id_strategy(), json_value()).prop_map(|(id, result)| {
                    let v = json!({"jsonrpc": "2.0", "id": id_json(&id), "result": result});
                    (v, FrameKind::Response, Some(id))
                }),
                (
                    prop::option::of(id_strategy()),
                    any::<i64>(),
                    any::<String>()
                )
                    .prop_map(|(id, code, message)| {
                        let id_v = id.as_ref().map(id_json).unwrap_or(Value::Null);
                        let v = json!({"jsonrpc": "2.0", "id": id_v,
                            "error": {"code": code, "message": message}});
                        (v, FrameKind::Error, id)
                    }),
            ]
        }

        /// Bytes that look like JSON-RPC often enough to reach the deeper parsing paths.
        fn jsonish() -> impl Strategy<Value = Vec<u8>> {
            const PARTS: &[&str] = &[
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "\"",
                "\\",
                " ",
                "\n",
                "null",
                "true",
                "1",
                "-0",
                "1e999",
                "18446744073709551616",
                "\"jsonrpc\"",
                "\"2.0\"",
                "\"id\"",
                "\"method\"",
                "\"params\"",
                "\"result\"",
                "\"error\"",
                "\"name\"",
                "\"Name\"",
                "\"uri\"",
                "\"tools/call\"",
                "\"resources/read\"",
                "\"_meta\"",
                "\"progressToken\"",
                "\"requestId\"",
                "\"notifications/cancelled\"",
                "\"\\u0000\"",
                "\"\\ud800\"",
                "é",
                "\u{feff}",
            ];
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop::collection::vec(prop::sample::select(PARTS), 0..40)
                    .prop_map(|p| p.concat().into_bytes()),
            ]
        }

        // proptest's default: 256 cases (PROPTEST_CASES=N for a deeper run).
        proptest! {
            /// Arbitrary bytes give a frame or an error, never a panic; a batch's frames are
            /// slices of the input.
            #[test]
            fn never_panics_on_arbitrary_bytes(bytes in jsonish()) {
                let raw = Bytes::from(bytes);
                let _ = Frame::parse_single(raw.clone());
                if let Ok(m) = Message::parse(raw.clone()) {
                    for f in m.frames() {
                        let range = f.raw().as_ptr() as usize - raw.as_ptr() as usize;
                        prop_assert!(range + f.raw().len() <= raw.len());
                    }
                }
            }

            /// A valid message parses to its kind and id (with its JSON type) and keeps its
            /// raw bytes exactly, whatever the whitespace around and inside it.
            #[test]
            fn valid_message_round_trips(
                (msg, kind, id) in message(),
                pretty in any::<bool>(),
                pad in "[ \t\r\n]{0,3}",
            ) {
                let text = if pretty {
                    serde_json::to_string_pretty(&msg).unwrap()
                } else {
                    serde_json::to_string(&msg).unwrap()
                };
                let text = format!("{pad}{text}{pad}");
                let raw = Bytes::from(text.clone());
                let f = Frame::parse_single(raw.clone()).unwrap();
                prop_assert_eq!(&f.raw()[..], text.as_bytes());
                prop_assert_eq!(f.kind(), kind);
                prop_assert_eq!(f.id(), id.as_ref());
                if let Some(id) = f.id() {
                    // The id serialises back to the same JSON (number stays number).
                    prop_assert_eq!(&id_json(id), &msg["id"]);
                }
                prop_assert_eq!(f.method(), msg["method"].as_str());
                if msg["method"] == "tools/call" {
                    prop_assert_eq!(f.target(), msg["params"]["name"].as_str());
                }
                match Message::parse(raw).unwrap() {
                    Message::Single(g) => prop_assert_eq!(g.raw(), f.raw()),
                    Message::Batch(_) => prop_assert!(false, "a single message parsed as a batch"),
                }
            }

            /// A batch splits into frames whose raw bytes are exactly each element's.
            #[test]
            fn batch_elements_keep_their_bytes(
                msgs in prop::collection::vec(message(), 1..5),
                sep in "[ \n]{0,2}",
            ) {
                let items: Vec<String> =
                    msgs.iter().map(|(m, _, _)| serde_json::to_string(m).unwrap()).collect();
                let text = format!("[{sep}{}{sep}]", items.join(&format!(",{sep}")));
                let m = Message::parse(Bytes::from(text)).unwrap();
                prop_assert!(m.is_batch());
                prop_assert_eq!(m.frames().len(), items.len());
                for (f, ((_, kind, id), item)) in m.frames().iter().zip(msgs.iter().zip(&items)) {
                    prop_assert_eq!(&f.raw()[..], item.as_bytes());
                    prop_assert_eq!(f.kind(), *kind);
                    prop_assert_eq!(f.id(), id.as_ref());
                }
            }
        }
    }
}
