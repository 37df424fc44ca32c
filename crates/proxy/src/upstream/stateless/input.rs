//! A modern server's multi-round-trip input (`InputRequiredResult`) for a session-based
//! client: each of its `inputRequests` is sent to the client as a server request of its own
//! (on the stream of the client's request, as a session-based server would), the client's
//! answers are collected, and the original request is sent again with `inputResponses` and the
//! server's `requestState`. The client sees one request and, in between, the server's
//! questions — exactly what a session-based server does.

use crate::translate::envelope::id_value;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use shadowcat_proto::error::{UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameKind, RequestId};
use std::collections::HashMap;
use std::sync::Arc;

/// Server requests a session-based client can be asked (it declared the capability, or the
/// server would not ask).
const ASKABLE: [&str; 3] = ["elicitation/create", "sampling/createMessage", "roots/list"];

/// One client request waiting for its client's answers.
struct Round {
    request: Frame,
    state: Option<Value>,
    collected: Map<String, Value>,
}

/// The client requests whose server asked for input.
#[derive(Default)]
pub(super) struct Rounds {
    /// Proxy request id → (client request id, input key).
    asking: HashMap<RequestId, (RequestId, String)>,
    rounds: HashMap<RequestId, Round>,
    next: u64,
}

/// What a client's response means.
pub(super) enum Answered {
    /// Not an answer to one of the proxy's questions.
    NotOurs,
    /// Recorded; other answers are still awaited.
    Waiting,
    /// The client answered with an error: its request fails with this.
    Refused(Frame),
    /// Every question answered: send this request again.
    Retry(Frame),
}

impl Rounds {
    /// The server answered `request` (client id `id`) with `result`, an `InputRequiredResult`:
    /// the server requests to send to the client, or `None` when nothing can be asked.
    pub(super) fn ask(
        &mut self,
        id: &RequestId,
        request: Frame,
        result: &Value,
    ) -> Option<Vec<Frame>> {
        let inputs = result["inputRequests"].as_object()?;
        if inputs.is_empty()
            || inputs
                .values()
                .any(|r| !ASKABLE.contains(&r["method"].as_str().unwrap_or("")))
        {
            return None;
        }
        let mut out = Vec::with_capacity(inputs.len());
        for (key, req) in inputs {
            self.next += 1;
            let pid = RequestId::String(Arc::from(format!("shadowcat-input-{}", self.next)));
            let mut ask = json!({"jsonrpc":"2.0","id": id_value(&pid),"method": req["method"]});
            if !req["params"].is_null() {
                ask["params"] = req["params"].clone();
            }
            out.push(Frame::parse_single(Bytes::from(ask.to_string())).ok()?);
            self.asking.insert(pid, (id.clone(), key.clone()));
        }
        self.rounds.insert(
            id.clone(),
            Round {
                request,
                state: result.get("requestState").cloned(),
                collected: Map::new(),
            },
        );
        Some(out)
    }

    /// A response the client sent.
    pub(super) fn answered(&mut self, frame: &Frame) -> Answered {
        let Some((client_id, key)) = frame.id().and_then(|id| self.asking.remove(id)) else {
            return Answered::NotOurs;
        };
        let v: Value = serde_json::from_slice(frame.raw()).unwrap_or(Value::Null);
        if frame.kind() == FrameKind::Error {
            self.forget(&client_id);
            let why = v["error"]["message"].as_str().unwrap_or("an error");
            let msg = format!("the client refused the server's request for input: {why}");
            return Answered::Refused(error_frame(Some(&client_id), UPSTREAM_ERROR, &msg));
        }
        let Some(round) = self.rounds.get_mut(&client_id) else {
            return Answered::NotOurs;
        };
        round.collected.insert(key, v["result"].clone());
        if self.asking.values().any(|(c, _)| *c == client_id) {
            return Answered::Waiting;
        }
        let Some(round) = self.rounds.remove(&client_id) else {
            return Answered::NotOurs;
        };
        match retry(&round) {
            Some(f) => Answered::Retry(f),
            None => Answered::Refused(error_frame(
                Some(&client_id),
                UPSTREAM_ERROR,
                "the request could not be sent again with the client's input",
            )),
        }
    }

    /// Drop what is kept for client request `id`; true if it was waiting for answers.
    pub(super) fn forget(&mut self, id: &RequestId) -> bool {
        self.asking.retain(|_, (c, _)| c != id);
        self.rounds.remove(id).is_some()
    }
}

/// The original request with `inputResponses` and the server's `requestState`.
fn retry(round: &Round) -> Option<Frame> {
    let mut v: Value = serde_json::from_slice(round.request.raw()).ok()?;
    let params = v
        .as_object_mut()?
        .entry("params")
        .or_insert_with(|| json!({}));
    let params = params.as_object_mut()?;
    params.insert(
        "inputResponses".into(),
        Value::Object(round.collected.clone()),
    );
    match &round.state {
        Some(s) => params.insert("requestState".into(), s.clone()),
        None => params.remove("requestState"),
    };
    Frame::parse_single(Bytes::from(v.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Frame {
        Frame::parse_single(Bytes::from(v.to_string())).unwrap()
    }

    #[test]
    fn questions_go_to_the_client_and_answers_make_a_retry() {
        let mut r = Rounds::default();
        let req = f(json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"ask"}}));
        let ir = json!({"resultType":"input_required","requestState":"st","inputRequests":{
            "who":{"method":"elicitation/create","params":{"message":"name?"}},
            "llm":{"method":"sampling/createMessage","params":{"maxTokens":3}}}});
        let asks = r.ask(&RequestId::Number(5), req, &ir).unwrap();
        assert_eq!(asks.len(), 2);
        let (mut who, mut llm) = (None, None);
        for a in &asks {
            match a.method() {
                Some("elicitation/create") => who = a.id().cloned(),
                _ => llm = a.id().cloned(),
            }
        }
        let who = who.unwrap();
        let answer = f(
            json!({"jsonrpc":"2.0","id": id_value(&who),"result":{"action":"accept","content":{"n":"Ada"}}}),
        );
        assert!(matches!(r.answered(&answer), Answered::Waiting));
        let llm = llm.unwrap();
        let answer = f(json!({"jsonrpc":"2.0","id": id_value(&llm),"result":{"role":"assistant"}}));
        let Answered::Retry(retry) = r.answered(&answer) else {
            panic!("expected a retry");
        };
        let v: Value = serde_json::from_slice(retry.raw()).unwrap();
        assert_eq!(v["id"], 5);
        assert_eq!(v["params"]["requestState"], "st");
        assert_eq!(v["params"]["inputResponses"]["who"]["content"]["n"], "Ada");
        assert_eq!(v["params"]["inputResponses"]["llm"]["role"], "assistant");
        // Answered twice, or never asked: not ours.
        assert!(matches!(r.answered(&answer), Answered::NotOurs));
    }

    #[test]
    fn errors_and_unaskable_requests() {
        let mut r = Rounds::default();
        let req = f(json!({"jsonrpc":"2.0","id":"x","method":"prompts/get","params":{"name":"p"}}));
        let odd = json!({"inputRequests":{"a":{"method":"tasks/get"}}});
        assert!(
            r.ask(&RequestId::String("x".into()), req.clone(), &odd)
                .is_none()
        );
        assert!(
            r.ask(
                &RequestId::String("x".into()),
                req.clone(),
                &json!({"requestState":"s"})
            )
            .is_none()
        );
        let ir = json!({"inputRequests":{"a":{"method":"roots/list"}}});
        let asks = r.ask(&RequestId::String("x".into()), req, &ir).unwrap();
        let err = f(
            json!({"jsonrpc":"2.0","id": id_value(asks[0].id().unwrap()),
            "error":{"code":-32601,"message":"no roots"}}),
        );
        let Answered::Refused(e) = r.answered(&err) else {
            panic!("expected a refusal");
        };
        assert_eq!(e.id(), Some(&RequestId::String("x".into())));
        assert!(String::from_utf8_lossy(e.raw()).contains("no roots"));
    }
}
