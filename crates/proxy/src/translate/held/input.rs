//! Multi-round-trip input on a held session (see [`crate::translate::mrtr`]): server requests
//! for input suspend the client's request, its retry resumes it.

use super::{CHANNEL_CAPACITY, Call, CallGuard, Held, Waiter, severity};
use crate::error::ProxyError;
use crate::translate::envelope::{self, id_value};
use crate::translate::mrtr::{self, Suspended};
use crate::upstream::Via;
use bytes::Bytes;
use serde_json::{Value, json};
use shadowcat_proto::{Frame, RequestId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl Held {
    /// A client's retry with `inputResponses` for a request that asked it for input: answer the
    /// server's requests, then wait for the request's answer (or ask again for what is missing).
    pub(super) async fn resume(
        self: &Arc<Self>,
        frame: &Frame,
        client_id: RequestId,
        state: &str,
        responses: &serde_json::Map<String, Value>,
    ) -> Result<Call, ProxyError> {
        let invalid = |msg: &str| {
            ProxyError::bad(
                crate::error::Refusal::Malformed,
                shadowcat_proto::error::INVALID_PARAMS,
                msg,
            )
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (answers, uid, now) = {
            let mut t = self.table();
            let Some(mut s) = t.suspended.remove(state) else {
                return Err(invalid(
                    "unknown or expired requestState: send the request again without it",
                ));
            };
            if Some(&*s.method) != frame.method() || s.target.as_deref() != frame.target() {
                t.suspended.insert(state.to_string(), s);
                return Err(invalid("this requestState belongs to another request"));
            }
            let answers = s.answer(responses);
            let uid = s.uid.clone();
            let now = if s.asking() {
                // Input still missing: ask for it again, under the same state.
                let again = s.input_required(&client_id, state);
                t.suspended.insert(state.to_string(), s);
                Some(again)
            } else if let Some(done) = s.done.take() {
                let info = self.server_info();
                Some(envelope::modern_answer(&done, &client_id, &s.method, info).unwrap_or(done))
            } else {
                let env = envelope::read_envelope(frame);
                t.waiting.insert(
                    uid.clone(),
                    Waiter {
                        client_id,
                        method: s.method,
                        target: s.target,
                        client_token: frame.progress_token().map(id_value),
                        log_level: env.log_level.as_deref().and_then(severity),
                        tx: tx.clone(),
                    },
                );
                None
            };
            (answers, uid, now)
        };
        self.touch();
        if let Some(f) = now {
            let _ = tx.try_send(f);
        }
        drop(tx);
        let guard = CallGuard {
            held: self.clone(),
            id: uid.clone(),
        };
        for a in answers {
            self.core.from_client(a).await?;
        }
        Ok(Call { rx, guard })
    }

    /// A server request for input (`sampling/createMessage`, `elicitation/create`) related to
    /// a client request that may take input: the client gets an `InputRequiredResult` for it.
    /// False when it cannot be related to one.
    pub(super) fn suspend(&self, request: &Frame, via: &Via) -> bool {
        let mut t = self.table();
        let uid = match via {
            Via::Request(id) => Some(id.clone()),
            // stdio and HTTP+SSE carry no relation: the only client request in flight, else
            // the only one already asking its client.
            _ => {
                let mut live = t.waiting.iter().filter(|(_, w)| !w.tx.is_closed());
                match (live.next(), live.next()) {
                    (Some((id, _)), None) => Some(id.clone()),
                    (None, _) if t.suspended.len() == 1 => {
                        t.suspended.values().next().map(|s| s.uid.clone())
                    }
                    _ => None,
                }
            }
        };
        let Some(uid) = uid else {
            return false;
        };
        if let Some(s) = t.suspended.values_mut().find(|s| s.uid == uid) {
            // Its client has not come back yet: this is asked in the same round.
            s.add(request);
            return true;
        }
        let takes_input = t
            .waiting
            .get(&uid)
            .is_some_and(|w| mrtr::TAKES_INPUT.contains(&&*w.method));
        if !takes_input {
            return false;
        }
        let Some(w) = t.waiting.remove(&uid) else {
            return false;
        };
        let mut s = Suspended::new(uid, w.method.clone(), w.target.clone());
        s.add(request);
        let state = mrtr::new_state();
        let ask = s.input_required(&w.client_id, &state);
        t.suspended.insert(state, s);
        drop(t);
        if let Err(mpsc::error::TrySendError::Full(ask)) = w.tx.try_send(ask) {
            self.core.tracker().spawn(async move {
                let _ = w.tx.send(ask).await;
            });
        }
        true
    }

    /// Suspended requests whose client did not come back within `ttl`: the server's requests
    /// get an error, the client's request is cancelled.
    pub(super) async fn expire(&self, ttl: Duration) {
        let expired: Vec<Suspended> = {
            let mut t = self.table();
            let old: Vec<String> = t
                .suspended
                .iter()
                .filter(|(_, s)| s.since.elapsed() >= ttl)
                .map(|(k, _)| k.clone())
                .collect();
            old.iter().filter_map(|k| t.suspended.remove(k)).collect()
        };
        for mut s in expired {
            tracing::info!(id = %s.uid, "a 2026-07-28 client never came back with the input it was asked for");
            let mut out = s.abandon("the client never answered (its requestState expired)");
            let note = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{
                "requestId": id_value(&s.uid), "reason": "the client's requestState expired"}});
            out.extend(Frame::parse_single(Bytes::from(note.to_string())));
            self.core.inflight().remove(&s.uid);
            for f in out {
                if let Err(e) = self.core.from_client(f).await {
                    tracing::debug!(error = %e, "could not tell the server");
                }
            }
        }
    }
}
