//! Messages held by `pause` rules, waiting for a person (through the admin API).

use super::rules::PauseLimits;
use serde::Serialize;
use serde_json::Value;
use shadowcat_proto::Frame;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// What a person decided about a paused message.
#[derive(Debug)]
pub enum Decision {
    /// Let it through unchanged.
    Resume,
    /// Let this message through instead.
    Edit(Frame),
    /// Discard it (a request is answered with an error so its sender does not wait forever).
    Drop,
}

/// A paused message as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PausedInfo {
    /// Id to resume, edit or drop it with.
    pub id: u64,
    /// Proxy session id.
    pub session: String,
    /// `c2s` or `s2c`.
    pub direction: &'static str,
    /// The rule that paused it.
    pub rule: String,
    /// When it was paused (RFC 3339 UTC).
    pub since: String,
    /// Seconds until its timeout applies.
    pub timeout_s: f64,
    /// The message.
    pub message: Value,
}

struct Held {
    info: PausedInfo,
    original: Frame,
    tx: oneshot::Sender<Decision>,
}

/// Why a decision could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No paused message has this id (never existed, already decided, or timed out).
    #[error("no paused message with id {0} (it may have been decided already or timed out)")]
    NotFound(u64),
    /// The edited message is not a valid JSON-RPC message.
    #[error("the edited message is invalid: {0}")]
    Invalid(String),
}

/// Why a message could not be held: a cap of `[pause]` is reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseFull {
    /// `max_paused_per_session` messages of this session are held already.
    #[error(
        "{0} messages of this session are already held for a decision (max_paused_per_session)"
    )]
    Session(usize),
    /// `max_paused` messages are held already.
    #[error("{0} messages are already held for a decision (max_paused)")]
    Proxy(usize),
}

/// Every paused message of a proxy.
#[derive(Default)]
pub struct PauseBoard {
    next: AtomicU64,
    held: Mutex<BTreeMap<u64, Held>>,
}

impl PauseBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Held>> {
        crate::sync::lock(&self.held)
    }

    /// Hold a message unless `limits` are reached (checked and taken under one lock); the
    /// receiver yields the decision.
    pub(crate) fn hold(
        &self,
        mut info: PausedInfo,
        original: Frame,
        limits: PauseLimits,
    ) -> Result<(u64, oneshot::Receiver<Decision>), PauseFull> {
        let mut held = self.lock();
        if held.len() >= limits.max_paused {
            return Err(PauseFull::Proxy(held.len()));
        }
        // At most `max_paused` entries: counting them is cheaper than keeping a second index.
        let of_session = held
            .values()
            .filter(|h| h.info.session == info.session)
            .count();
        if of_session >= limits.max_paused_per_session {
            return Err(PauseFull::Session(of_session));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        info.id = id;
        let (tx, rx) = oneshot::channel();
        held.insert(id, Held { info, original, tx });
        Ok((id, rx))
    }

    /// Forget a message whose wait ended (timeout, session gone).
    pub(crate) fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Paused messages, oldest first.
    pub fn list(&self) -> Vec<PausedInfo> {
        self.lock().values().map(|h| h.info.clone()).collect()
    }

    /// Number of paused messages.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is paused.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resume a message.
    pub fn resume(&self, id: u64) -> Result<(), DecideError> {
        self.decide(id, |_| Ok(Decision::Resume))
    }

    /// Drop a message.
    pub fn drop_message(&self, id: u64) -> Result<(), DecideError> {
        self.decide(id, |_| Ok(Decision::Drop))
    }

    /// Replace a message with `edited` (JSON). The JSON-RPC id is kept from the original so
    /// that the reply still reaches the request's sender.
    pub fn edit(&self, id: u64, mut edited: Value) -> Result<(), DecideError> {
        self.decide(id, move |orig| {
            if !edited.is_object() {
                return Err(DecideError::Invalid("it must be a JSON object".into()));
            }
            match serde_json::from_slice::<Value>(orig.raw())
                .ok()
                .and_then(|v| v.get("id").cloned())
            {
                Some(orig_id) => edited["id"] = orig_id,
                None => {
                    if let Some(m) = edited.as_object_mut() {
                        m.remove("id");
                    }
                }
            }
            let bytes =
                serde_json::to_vec(&edited).map_err(|e| DecideError::Invalid(e.to_string()))?;
            let frame = Frame::parse_single(bytes.into())
                .map_err(|e| DecideError::Invalid(e.to_string()))?;
            if frame.kind() != orig.kind() {
                return Err(DecideError::Invalid(format!(
                    "it is a {:?} but the paused message is a {:?}",
                    frame.kind(),
                    orig.kind()
                )));
            }
            Ok(Decision::Edit(frame))
        })
    }

    fn decide(
        &self,
        id: u64,
        make: impl FnOnce(&Frame) -> Result<Decision, DecideError>,
    ) -> Result<(), DecideError> {
        let mut map = self.lock();
        let held = map.get(&id).ok_or(DecideError::NotFound(id))?;
        let decision = make(&held.original)?;
        let held = map.remove(&id).ok_or(DecideError::NotFound(id))?;
        drop(map);
        held.tx
            .send(decision)
            .map_err(|_| DecideError::NotFound(id))
    }
}
