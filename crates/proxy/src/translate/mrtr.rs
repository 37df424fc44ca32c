//! Server requests of a held session as 2026-07-28 multi-round-trip results (MRTR).
//!
//! A session-based server asks its client for input with a request of its own
//! (`sampling/createMessage`, `elicitation/create`) while it works on the client's request; a
//! 2026-07-28 client can only be asked in the *answer* to its request. So when such a server
//! request is related to a client request that may take input (`tools/call`, `prompts/get`,
//! `resources/read`), the proxy answers the client with an `InputRequiredResult` (the server's
//! request under a key, and a `requestState` of its own), keeps the server's request and the
//! client's request open on the held session, and when the client retries with
//! `inputResponses` and that `requestState`, answers the server's request and relays the
//! client's request's eventual answer (or the next round of input) to the retry.
//!
//! The `requestState` is 128 random bits, known only to the held session it was issued on
//! (held sessions are never shared between principals), valid for one retry of the same method
//! and name, and expires with the held session's idle timeout: the server's requests are then
//! answered with an error and the client's request is cancelled.

use super::envelope::id_value;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use shadowcat_proto::error::{INTERNAL_ERROR, error_frame};
use shadowcat_proto::{Frame, RequestId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Client requests that may be answered with an `InputRequiredResult`.
pub const TAKES_INPUT: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// Server requests that become `inputRequests`.
pub const INPUT_METHODS: [&str; 2] = ["sampling/createMessage", "elicitation/create"];

/// A client request waiting for its client's input.
#[derive(Debug)]
pub struct Suspended {
    /// Its id on the held session.
    pub uid: RequestId,
    /// Its method and name: a retry must match them.
    pub method: Arc<str>,
    pub target: Option<Arc<str>>,
    /// The server's requests not answered yet: key → (server request id, `{method, params}`).
    inputs: BTreeMap<String, (RequestId, Value)>,
    next_key: usize,
    /// The server's answer to the client request, if it came while the client was away.
    pub done: Option<Frame>,
    /// When the client was asked.
    pub since: Instant,
}

impl Suspended {
    /// A request about to ask its client for input.
    pub fn new(uid: RequestId, method: Arc<str>, target: Option<Arc<str>>) -> Suspended {
        Suspended {
            uid,
            method,
            target,
            inputs: BTreeMap::new(),
            next_key: 0,
            done: None,
            since: Instant::now(),
        }
    }

    /// Add a server request to ask the client.
    pub fn add(&mut self, server_request: &Frame) {
        let Some(id) = server_request.id().cloned() else {
            return;
        };
        let v: Value = serde_json::from_slice(server_request.raw()).unwrap_or(Value::Null);
        let request = json!({"method": v["method"], "params": v["params"]});
        self.next_key += 1;
        let key = format!("input-{}", self.next_key);
        self.inputs.insert(key, (id, request));
    }

    /// True while some server request waits for the client's answer.
    pub fn asking(&self) -> bool {
        !self.inputs.is_empty()
    }

    /// The `InputRequiredResult` answering client request `client_id`.
    pub fn input_required(&self, client_id: &RequestId, state: &str) -> Frame {
        let requests: Map<String, Value> = self
            .inputs
            .iter()
            .map(|(k, (_, r))| (k.clone(), r.clone()))
            .collect();
        frame(json!({"jsonrpc":"2.0","id": id_value(client_id),"result":{
            "resultType":"input_required","inputRequests": requests,"requestState": state}}))
    }

    /// The client's `inputResponses` as answers to the server's requests (those it answered
    /// are no longer asked).
    pub fn answer(&mut self, responses: &Map<String, Value>) -> Vec<Frame> {
        let answered: Vec<String> = self
            .inputs
            .keys()
            .filter(|k| responses.contains_key(*k))
            .cloned()
            .collect();
        answered
            .into_iter()
            .filter_map(|k| {
                let (id, _) = self.inputs.remove(&k)?;
                Some(frame(
                    json!({"jsonrpc":"2.0","id": id_value(&id),"result": responses[&k]}),
                ))
            })
            .collect()
    }

    /// Errors for the server's requests nobody will answer (the state expired).
    pub fn abandon(&mut self, why: &str) -> Vec<Frame> {
        std::mem::take(&mut self.inputs)
            .into_values()
            .map(|(id, _)| error_frame(Some(&id), INTERNAL_ERROR, why))
            .collect()
    }
}

/// A fresh `requestState`: 128 random bits, hex.
pub fn new_state() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// The `requestState` and `inputResponses` of a retried request, if it is one.
pub fn retry_of(frame: &Frame) -> Option<(String, Map<String, Value>)> {
    let v: Value = serde_json::from_slice(frame.raw()).ok()?;
    let state = v["params"]["requestState"].as_str()?.to_string();
    let responses = v["params"]["inputResponses"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Some((state, responses))
}

fn frame(v: Value) -> Frame {
    Frame::parse_single(Bytes::from(v.to_string())).expect("a valid JSON-RPC message")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Frame {
        frame(v)
    }

    #[test]
    fn server_requests_become_input_requests_and_answers_go_back() {
        let mut s = Suspended::new(RequestId::Number(4), Arc::from("tools/call"), None);
        s.add(&f(
            json!({"jsonrpc":"2.0","id":"srv-1","method":"elicitation/create",
            "params":{"message":"name?","requestedSchema":{"type":"object"}}}),
        ));
        s.add(&f(json!({"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{"maxTokens":5}})));
        let state = new_state();
        assert_eq!(state.len(), 32);
        let ir: Value = serde_json::from_slice(
            s.input_required(&RequestId::String("c".into()), &state)
                .raw(),
        )
        .unwrap();
        assert_eq!(ir["id"], "c");
        assert_eq!(ir["result"]["resultType"], "input_required");
        assert_eq!(ir["result"]["requestState"], state.as_str());
        assert_eq!(
            ir["result"]["inputRequests"]["input-1"]["method"],
            "elicitation/create"
        );
        assert_eq!(
            ir["result"]["inputRequests"]["input-2"]["params"]["maxTokens"],
            5
        );
        // The client answers one: it goes to the server with the server's id; one is left.
        let mut responses = Map::new();
        responses.insert(
            "input-1".into(),
            json!({"action":"accept","content":{"name":"Ada"}}),
        );
        let out = s.answer(&responses);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id(), Some(&RequestId::String("srv-1".into())));
        assert!(s.asking());
        let errs = s.abandon("expired");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].id(), Some(&RequestId::Number(7)));
        assert!(!s.asking());
    }

    #[test]
    fn retries_are_recognised() {
        let r = f(
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x",
            "requestState":"abc","inputResponses":{"input-1":{"action":"decline"}}}}),
        );
        let (state, responses) = retry_of(&r).unwrap();
        assert_eq!(state, "abc");
        assert!(responses.contains_key("input-1"));
        let plain = f(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}));
        assert!(retry_of(&plain).is_none());
    }
}
