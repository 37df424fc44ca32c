//! Where a held session's server frames go: answers to their request, progress and log
//! messages to the request that caused them, list changes to listeners, server requests
//! answered (or turned into multi-round-trip input).

use super::{Held, SUBSCRIPTION_ID};
use crate::translate::envelope::{self, id_value};
use crate::translate::mrtr;
use crate::upstream::Via;
use bytes::Bytes;
use serde_json::{Value, json};
use shadowcat_proto::error::{METHOD_NOT_FOUND, UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, FrameKind};
use tokio::sync::mpsc;

/// Log levels in increasing severity (RFC 5424, as MCP uses them).
const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

pub(super) fn severity(level: &str) -> Option<usize> {
    LEVELS.iter().position(|l| *l == level)
}

impl Held {
    /// Route one server frame (after the pipeline).
    pub(super) async fn on_frame(&self, frame: Frame, via: &Via) {
        match frame.kind() {
            FrameKind::Response | FrameKind::Error => self.route_reply(frame).await,
            FrameKind::Request => self.answer_server_request(frame, via).await,
            FrameKind::Notification => self.route_notification(frame, via),
        }
    }

    pub(super) async fn route_reply(&self, frame: Frame) {
        let w = {
            let mut t = self.table();
            let Some(id) = frame.id() else {
                return;
            };
            match t.waiting.remove(id) {
                Some(w) => w,
                None => {
                    // Answered while its client is away for input: kept for the retry.
                    match t.suspended.values_mut().find(|s| s.uid == *id) {
                        Some(s) => s.done = Some(frame),
                        None => tracing::debug!(%id, "an answer for no waiting request; dropped"),
                    }
                    return;
                }
            }
        };
        self.touch();
        let out = if &*w.method == "initialize" {
            frame
        } else {
            match envelope::modern_answer(&frame, &w.client_id, &w.method, self.server_info()) {
                Ok(f) => f,
                Err(e) => error_frame(
                    Some(&w.client_id),
                    UPSTREAM_ERROR,
                    &format!("the server's answer could not be translated: {e}"),
                ),
            }
        };
        // The answer must arrive: wait for room (in a task, so a slow client never stalls the
        // other requests of this session).
        if let Err(mpsc::error::TrySendError::Full(out)) = w.tx.try_send(out) {
            let tx = w.tx.clone();
            self.core.tracker().spawn(async move {
                let _ = tx.send(out).await;
            });
        }
    }

    pub(super) async fn answer_server_request(&self, frame: Frame, via: &Via) {
        let method = frame.method().unwrap_or("");
        let id = frame.id().cloned();
        if mrtr::INPUT_METHODS.contains(&method) && self.suspend(&frame, via) {
            return;
        }
        let answer = if method == "ping" {
            let v = json!({"jsonrpc":"2.0","id": id.as_ref().map(id_value),"result":{}});
            Frame::parse_single(Bytes::from(v.to_string())).ok()
        } else {
            tracing::info!(
                method,
                "a server request on a held session cannot reach a 2026-07-28 client"
            );
            let msg = format!(
                "`{method}` is not available: the client speaks 2026-07-28 through Shadowcat, \
                 which holds this session for it; server requests reach it only as input for \
                 one of its tools/call, prompts/get or resources/read requests in flight"
            );
            Some(error_frame(id.as_ref(), METHOD_NOT_FOUND, &msg))
        };
        if let Some(a) = answer
            && let Err(e) = self.core.from_client(a).await
        {
            tracing::debug!(error = %e, "could not answer a server request");
        }
    }

    pub(super) fn route_notification(&self, frame: Frame, via: &Via) {
        let method = frame.method().unwrap_or("").to_string();
        let method = method.as_str();
        match method {
            "notifications/progress" => {
                let t = self.table();
                let Some(w) = frame.progress_token().and_then(|tok| t.waiting.get(tok)) else {
                    return;
                };
                let Some(token) = &w.client_token else {
                    return;
                };
                if let Ok(f) = envelope::with_progress_token(&frame, token) {
                    offer(&w.tx, f, method);
                }
            }
            "notifications/message" => {
                let level = log_level(&frame);
                let t = self.table();
                let w = match via {
                    Via::Request(id) => t.waiting.get(id),
                    _ => {
                        // The proxy's own requests have nobody listening.
                        let mut client = t.waiting.values().filter(|w| !w.tx.is_closed());
                        match (client.next(), client.next()) {
                            (Some(w), None) => Some(w),
                            _ => None,
                        }
                    }
                };
                if let Some(w) = w
                    && let (Some(min), Some(l)) = (w.log_level, level)
                    && l >= min
                {
                    offer(&w.tx, frame, method);
                }
            }
            _ => {
                let t = self.table();
                let mut any = false;
                for l in t.listeners.values().filter(|l| l.filter.wants(&frame)) {
                    any = true;
                    if let Ok(f) =
                        envelope::with_meta(&frame, SUBSCRIPTION_ID, l.subscription.clone())
                    {
                        offer(&l.tx, f, method);
                    }
                }
                if !any {
                    tracing::debug!(
                        method,
                        "no 2026-07-28 client asked for this notification; dropped"
                    );
                }
            }
        }
    }
}

fn log_level(frame: &Frame) -> Option<usize> {
    let v: Value = serde_json::from_slice(frame.raw()).ok()?;
    severity(v["params"]["level"].as_str()?)
}

/// Hand a notification to a stream without waiting: a full stream loses it (logged), it never
/// stalls the session.
fn offer(tx: &mpsc::Sender<Frame>, frame: Frame, method: &str) {
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(frame) {
        tracing::warn!(
            method,
            "a 2026-07-28 client's stream is full; notification dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        Frame::parse_single(Bytes::from(v.to_string())).unwrap()
    }

    #[test]
    pub(super) fn log_levels_are_ordered() {
        assert!(severity("error") > severity("info"));
        assert_eq!(severity("nope"), None);
        let f = frame(
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"warning","data":"x"}}),
        );
        assert_eq!(log_level(&f), severity("warning"));
    }
}
