//! The client's requests that have gone upstream and not been answered yet.

use shadowcat_proto::error::{UPSTREAM_ERROR, error_frame};
use shadowcat_proto::{Frame, RequestId};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Timed-out request ids remembered so that their late answers are dropped.
const EXPIRED_KEPT: usize = 256;

/// One pending request.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its method.
    pub method: Arc<str>,
    /// The progress token it asked for, if any.
    pub progress_token: Option<RequestId>,
    /// When it went upstream.
    pub since: Instant,
}

/// Pending client requests by id. The lock is never held across an await.
#[derive(Debug, Default)]
pub struct Inflight {
    map: Mutex<HashMap<RequestId, Pending>>,
    expired: Mutex<VecDeque<RequestId>>,
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Pending>> {
        crate::sync::lock(&self.map)
    }

    fn expired(&self) -> std::sync::MutexGuard<'_, VecDeque<RequestId>> {
        crate::sync::lock(&self.expired)
    }

    /// Record a request (frames without an id are ignored). `false`, and nothing recorded, when
    /// a request with the same id is already pending: its answer could not be told apart.
    #[must_use]
    pub fn insert(&self, frame: &Frame) -> bool {
        let Some(id) = frame.id() else {
            return true;
        };
        let mut map = self.lock();
        if map.contains_key(id) {
            return false;
        }
        let p = Pending {
            method: Arc::from(frame.method().unwrap_or("")),
            progress_token: frame.progress_token().cloned(),
            since: Instant::now(),
        };
        map.insert(id.clone(), p);
        true
    }

    /// Whether a request with this id is pending.
    pub fn contains(&self, id: &RequestId) -> bool {
        self.lock().contains_key(id)
    }

    /// Complete a request.
    pub fn remove(&self, id: &RequestId) -> Option<Pending> {
        self.lock().remove(id)
    }

    /// When the oldest pending request went upstream.
    pub fn oldest(&self) -> Option<Instant> {
        self.lock().values().map(|p| p.since).min()
    }

    /// Take the requests that went upstream before `cutoff`; their late answers will be
    /// recognised by [`Inflight::was_expired`].
    pub fn expire(&self, cutoff: Instant) -> Vec<(RequestId, Pending)> {
        let mut map = self.lock();
        let ids: Vec<RequestId> = map
            .iter()
            .filter(|(_, p)| p.since <= cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        let out: Vec<(RequestId, Pending)> = ids
            .into_iter()
            .filter_map(|id| map.remove(&id).map(|p| (id, p)))
            .collect();
        drop(map);
        if !out.is_empty() {
            let mut expired = self.expired();
            for (id, _) in &out {
                if expired.len() == EXPIRED_KEPT {
                    expired.pop_front();
                }
                expired.push_back(id.clone());
            }
        }
        out
    }

    /// Is this the id of a request that timed out? (Forgets it: one answer is expected.)
    pub fn was_expired(&self, id: &RequestId) -> bool {
        let mut expired = self.expired();
        match expired.iter().position(|e| e == id) {
            Some(i) => {
                expired.remove(i);
                true
            }
            None => false,
        }
    }

    /// Number of pending requests.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request that asked for this progress token.
    pub fn by_progress_token(&self, token: &RequestId) -> Option<RequestId> {
        self.lock()
            .iter()
            .find(|(_, p)| p.progress_token.as_ref() == Some(token))
            .map(|(id, _)| id.clone())
    }

    /// Take every pending request and turn each into a JSON-RPC error saying why it failed.
    pub fn fail_all(&self, reason: &str) -> Vec<Frame> {
        let drained: Vec<(RequestId, Pending)> = self.lock().drain().collect();
        drained
            .into_iter()
            .map(|(id, p)| {
                let msg = format!("{} failed: {reason}", p.method);
                error_frame(Some(&id), UPSTREAM_ERROR, &msg)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn tracks_and_fails_pending_requests() {
        let i = Inflight::default();
        let f = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t","_meta":{"progressToken":9}}}"#,
        ))
        .unwrap();
        assert!(i.insert(&f));
        assert!(
            !i.insert(&f),
            "a second request with a pending id is refused"
        );
        assert!(i.contains(&RequestId::String("a".into())));
        assert_eq!(
            i.by_progress_token(&RequestId::Number(9)),
            Some(RequestId::String("a".into()))
        );
        let errs = i.fail_all("the server process exited");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].id(), Some(&RequestId::String("a".into())));
        let text = std::str::from_utf8(errs[0].raw()).unwrap();
        assert!(
            text.contains("tools/call failed: the server process exited"),
            "{text}"
        );
        assert!(i.is_empty());
    }

    #[test]
    fn expired_requests_are_taken_and_their_late_answers_recognised() {
        let i = Inflight::default();
        let f = |id: &str| {
            Frame::parse_single(Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":"{id}","method":"tools/call","params":{{"name":"t"}}}}"#
            )))
            .unwrap()
        };
        assert!(i.insert(&f("old")));
        let cutoff = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(i.insert(&f("new")));
        assert!(i.oldest().is_some_and(|t| t <= cutoff));
        let gone = i.expire(cutoff);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, RequestId::String("old".into()));
        assert_eq!(i.len(), 1);
        assert!(i.was_expired(&RequestId::String("old".into())));
        assert!(
            !i.was_expired(&RequestId::String("old".into())),
            "forgotten once seen"
        );
        assert!(!i.was_expired(&RequestId::String("new".into())));
    }
}
