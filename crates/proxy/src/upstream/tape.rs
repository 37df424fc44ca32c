//! The tape upstream: a recorded server, answering from a tape (`shadowcat replay`).
//!
//! Each client request is matched to a recorded one ([`shadowcat_tape::replay::Book`]); what
//! the server did after it is played back with the recorded timing divided by the speed: the
//! reply (with the client's id), progress notifications (with the client's progress token),
//! other notifications, and server requests (sampling, elicitation — with fresh ids), waiting
//! for the client's answer where the server did. An unmatched request gets a JSON-RPC error that
//! names the closest recorded request.

use super::{UpstreamCtx, UpstreamEvent, Via};
use crate::error::ProxyError;
use serde_json::Value;
use shadowcat_proto::error::error_bytes;
use shadowcat_proto::{Frame, FrameKind, RequestId};
use shadowcat_tape::replay::{Book, Cursor, Role, Step, StepAction, Strictness, match_params};
use shadowcat_tape::{Tape, TapeError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a replay waits for the client's answer to a replayed server request.
const CLIENT_ANSWER_WAIT: Duration = Duration::from_secs(60);

/// A loaded tape and how to replay it; shared by every session of a replay.
pub struct TapeSource {
    /// The tape file.
    pub path: PathBuf,
    /// The recorded requests.
    pub book: Book,
    /// Recorded delays are divided by this (0 = no delays).
    pub speed: f64,
    /// How requests are matched.
    pub strictness: Strictness,
    /// Requests answered from the tape, over all sessions.
    pub answered: AtomicUsize,
    /// Requests nothing on the tape matched.
    pub unmatched: AtomicUsize,
    /// Answer what any client sends but a tape may not hold — `ping`, `logging/setLevel`, and
    /// `initialize` on a tape without one — when nothing recorded matches (`--strict` off).
    pub own_answers: bool,
}

impl TapeSource {
    /// Whether the replay answers `ping`, `logging/setLevel` and a missing `initialize` itself
    /// (see [`TapeSource::own_answers`]).
    pub fn own_answers(mut self, on: bool) -> TapeSource {
        self.own_answers = on;
        self
    }

    /// What the replay answers itself to `method` when the tape has nothing for it.
    fn own_answer(&self, method: &str, params: Option<&Value>) -> Option<Value> {
        if !self.own_answers {
            return None;
        }
        match method {
            "ping" | "logging/setLevel" => Some(serde_json::json!({})),
            "initialize" => {
                // Capabilities from what the tape holds; the client's version is agreed to.
                let seen = |prefix: &str| {
                    self.book
                        .entries
                        .iter()
                        .any(|e| e.method.starts_with(prefix))
                };
                let mut caps = serde_json::json!({"logging": {}});
                for (prefix, cap) in [
                    ("tools/", "tools"),
                    ("prompts/", "prompts"),
                    ("resources/", "resources"),
                ] {
                    if seen(prefix) {
                        caps[cap] = serde_json::json!({});
                    }
                }
                let version = params
                    .and_then(|p| p.get("protocolVersion"))
                    .cloned()
                    .unwrap_or_else(|| Value::from("2025-06-18"));
                Some(serde_json::json!({
                    "protocolVersion": version,
                    "capabilities": caps,
                    "serverInfo": {"name": "shadowcat-replay", "version": env!("CARGO_PKG_VERSION")},
                }))
            }
            _ => None,
        }
    }

    /// Load a tape for replay.
    pub fn load(path: &Path, speed: f64, strictness: Strictness) -> Result<TapeSource, TapeError> {
        if !(speed >= 0.0 && speed.is_finite()) {
            return Err(TapeError::Config(format!(
                "speed {speed}: use a number ≥ 0 (1 = recorded timing, 0 = no delays)"
            )));
        }
        let tape = Tape::open(path)?;
        Ok(TapeSource {
            path: path.to_path_buf(),
            book: Book::from_tape(&tape),
            speed,
            strictness,
            answered: AtomicUsize::new(0),
            unmatched: AtomicUsize::new(0),
            own_answers: true,
        })
    }
}

/// [`TapeSource`] as an upstream spec: compared by identity.
#[derive(Clone)]
pub struct TapeSpec(pub Arc<TapeSource>);

impl PartialEq for TapeSpec {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TapeSpec {}

impl std::fmt::Debug for TapeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TapeSpec({})", self.0.path.display())
    }
}

struct State {
    cursor: Cursor,
    running: HashMap<RequestId, CancellationToken>,
    waiting: HashMap<RequestId, oneshot::Sender<()>>,
    next_id: i64,
}

/// One session's replay.
pub struct TapeUpstream {
    src: Arc<TapeSource>,
    tx: mpsc::Sender<UpstreamEvent>,
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    closed: AtomicBool,
    sent: AtomicU64,
}

fn frame_of(v: &Value) -> Option<Frame> {
    Frame::parse_single(serde_json::to_vec(v).ok()?.into()).ok()
}

impl TapeUpstream {
    /// Start replaying for one session.
    pub fn new(spec: &TapeSpec, ctx: UpstreamCtx, tx: mpsc::Sender<UpstreamEvent>) -> TapeUpstream {
        TapeUpstream {
            src: spec.0.clone(),
            tx,
            state: Arc::new(Mutex::new(State {
                cursor: spec.0.book.cursor(),
                running: HashMap::new(),
                waiting: HashMap::new(),
                next_id: 1,
            })),
            cancel: ctx.cancel.child_token(),
            tracker: ctx.tracker,
            closed: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Take a client frame.
    pub async fn send(&self, frame: Frame) -> Result<(), ProxyError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ProxyError::UpstreamClosed("the replay has ended".into()));
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        match frame.kind() {
            FrameKind::Request => self.request(frame).await,
            FrameKind::Notification => {
                if let Some(id) = frame.cancelled_id() {
                    if let Some(t) = self.lock().running.remove(id) {
                        t.cancel();
                    }
                    return Ok(());
                }
                self.notification(&frame);
                Ok(())
            }
            FrameKind::Response | FrameKind::Error => {
                if let Some(id) = frame.id()
                    && let Some(tx) = self.lock().waiting.remove(id)
                {
                    let _ = tx.send(());
                }
                Ok(())
            }
        }
    }

    async fn request(&self, frame: Frame) -> Result<(), ProxyError> {
        let Some(id) = frame.id().cloned() else {
            return Ok(());
        };
        let v: Value = serde_json::from_slice(frame.raw()).unwrap_or(Value::Null);
        let params = match_params(v.get("params"));
        let token = v.pointer("/params/_meta/progressToken").cloned();
        let found = {
            let mut st = self.lock();
            let State { cursor, .. } = &mut *st;
            self.src
                .book
                .lookup(
                    cursor,
                    FrameKind::Request,
                    frame.method().unwrap_or(""),
                    frame.target(),
                    &params,
                    self.src.strictness,
                )
                .map(|e| e.steps.clone())
        };
        match found {
            Ok(steps) => {
                self.src.answered.fetch_add(1, Ordering::Relaxed);
                let stop = self.cancel.child_token();
                self.lock().running.insert(id.clone(), stop.clone());
                self.play(steps, Some((id, token)), stop);
                Ok(())
            }
            Err(miss) => {
                let method = frame.method().unwrap_or("");
                if let Some(result) = self.src.own_answer(method, v.get("params")) {
                    let answer = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result});
                    if let Some(f) = frame_of(&answer) {
                        let _ = self
                            .tx
                            .send(UpstreamEvent::Frame {
                                frame: Box::new(f),
                                via: Via::Request(id),
                            })
                            .await;
                    }
                    return Ok(());
                }
                self.src.unmatched.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(method = frame.method(), "{}", miss.message);
                let data = miss.closest.map(|c| serde_json::json!({ "closest": c }));
                let raw = error_bytes(Some(&id), miss.code, &miss.message, data.as_ref());
                if let Ok(f) = Frame::parse_single(raw) {
                    let _ = self
                        .tx
                        .send(UpstreamEvent::Frame {
                            frame: Box::new(f),
                            via: Via::Request(id),
                        })
                        .await;
                }
                Ok(())
            }
        }
    }

    fn notification(&self, frame: &Frame) {
        let v: Value = serde_json::from_slice(frame.raw()).unwrap_or(Value::Null);
        let params = match_params(v.get("params"));
        let steps = {
            let mut st = self.lock();
            let State { cursor, .. } = &mut *st;
            self.src
                .book
                .lookup(
                    cursor,
                    FrameKind::Notification,
                    frame.method().unwrap_or(""),
                    frame.target(),
                    &params,
                    Strictness::Method,
                )
                .map(|e| e.steps.clone())
        };
        if let Ok(steps) = steps
            && !steps.is_empty()
        {
            self.play(steps, None, self.cancel.child_token());
        }
    }

    /// Play the steps of one entry in the background. `request` is the client's request id and
    /// progress token, for a request entry.
    fn play(
        &self,
        steps: Vec<Step>,
        request: Option<(RequestId, Option<Value>)>,
        stop: CancellationToken,
    ) {
        let tx = self.tx.clone();
        let state = self.state.clone();
        let speed = self.src.speed;
        self.tracker.spawn(async move {
            let start = tokio::time::Instant::now();
            let via = match &request {
                Some((id, _)) => Via::Request(id.clone()),
                None => Via::Unrelated,
            };
            let mut pending: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
            for step in steps {
                if speed > 0.0 {
                    let due = start + Duration::from_secs_f64(step.at_us as f64 / 1e6 / speed);
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                match step.action {
                    StepAction::AwaitClient(recorded) => {
                        if let Some(rx) = pending.remove(&recorded.to_string()) {
                            tokio::select! {
                                _ = rx => {}
                                _ = tokio::time::sleep(CLIENT_ANSWER_WAIT) => {
                                    tracing::warn!("the client did not answer a replayed server request; going on");
                                }
                                _ = stop.cancelled() => return,
                            }
                        }
                    }
                    StepAction::Send { mut message, role } => {
                        match role {
                            Role::Reply => {
                                if let Some((id, _)) = &request {
                                    message["id"] = serde_json::to_value(id).unwrap_or(Value::Null);
                                }
                            }
                            Role::Progress => match request.as_ref().and_then(|(_, t)| t.clone()) {
                                Some(token) => message["params"]["progressToken"] = token,
                                None => continue,
                            },
                            Role::ServerRequest(recorded) => {
                                let (ack, rx) = oneshot::channel();
                                let id = {
                                    let mut st = crate::sync::lock(&state);
                                    let n = st.next_id;
                                    st.next_id += 1;
                                    st.waiting.insert(RequestId::Number(n), ack);
                                    n
                                };
                                message["id"] = Value::from(id);
                                pending.insert(recorded.to_string(), rx);
                            }
                            Role::Notification => {}
                        }
                        let Some(frame) = frame_of(&message) else {
                            continue;
                        };
                        if tx
                            .send(UpstreamEvent::Frame {
                                frame: Box::new(frame),
                                via: via.clone(),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            if let Some((id, _)) = &request {
                crate::sync::lock(&state)
                    .running
                    .remove(id);
            }
        });
    }

    /// End the replay: stop playing and report the upstream closed.
    pub async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.cancel.cancel();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.tx.send(UpstreamEvent::Closed {
                reason: "the replay ended".into(),
                exit_code: None,
            }),
        )
        .await;
    }
}

#[cfg(test)]
mod own_answer_tests {
    use super::*;

    fn source(own: bool) -> TapeSource {
        TapeSource {
            path: PathBuf::from("t.jsonl"),
            book: Book::default(),
            speed: 0.0,
            strictness: Strictness::Exact,
            answered: AtomicUsize::new(0),
            unmatched: AtomicUsize::new(0),
            own_answers: true,
        }
        .own_answers(own)
    }

    #[test]
    fn a_tape_without_them_still_answers_ping_set_level_and_initialize() {
        let s = source(true);
        assert_eq!(s.own_answer("ping", None), Some(serde_json::json!({})));
        assert_eq!(
            s.own_answer("logging/setLevel", None),
            Some(serde_json::json!({}))
        );
        let params = serde_json::json!({"protocolVersion": "2025-11-25"});
        let init = s.own_answer("initialize", Some(&params)).unwrap();
        assert_eq!(init["protocolVersion"], "2025-11-25");
        assert_eq!(init["capabilities"]["logging"], serde_json::json!({}));
        assert_eq!(init["serverInfo"]["name"], "shadowcat-replay");
        assert_eq!(s.own_answer("tools/call", None), None);
        let strict = source(false);
        assert_eq!(strict.own_answer("ping", None), None);
    }
}
