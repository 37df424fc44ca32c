//! The request timeout of every session on a thread: one sweeper task per thread (per worker
//! of the HTTP front, since its sessions stay on their worker) instead of a timer task per
//! session.
//!
//! A session with a request timeout registers here when it is made and leaves when it is
//! dropped. Sending or answering a request never touches the sweeper: it reads the sessions'
//! own in-flight tables ([`super::Inflight`]) when it wakes. It wakes
//!
//! * at the earliest deadline it knows of (the oldest pending request of each session it has
//!   looked at, plus that session's timeout), looking only at the sessions then due;
//! * at its *horizon*, one shortest timeout after it last looked at every session, to look at
//!   every session again. A request sent since then cannot be due before the horizon: its
//!   deadline is at least its session's timeout after that look.
//!
//! A session registered with a timeout shorter than the rest could be due before the horizon:
//! only then is the sweeper woken early (once per such session, never per request). The task
//! ends when no session is registered (the last one to leave wakes it), and the next
//! registration starts another; it holds no
//! session alive (weak references), and a task dropped with its runtime is replaced the same
//! way.

use super::Session;
use super::inflight::Pending;
use shadowcat_proto::RequestId;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

thread_local! {
    static LOCAL: Arc<Shared> = Arc::new(Shared::default());
}

/// One thread's sessions and the way to wake their sweeper.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    next_key: u64,
    sessions: HashMap<u64, Entry>,
    /// A sweeper task is running for these sessions.
    running: bool,
    /// When it looks at every session next (`None` while it is looking).
    horizon: Option<Instant>,
}

struct Entry {
    session: Weak<Session>,
    timeout: Duration,
}

/// A session's place in its thread's sweeper; dropped with the session.
pub(super) struct Registration {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let last = {
            let mut st = crate::sync::lock(&self.shared.state);
            st.sessions.remove(&self.key);
            st.sessions.is_empty()
        };
        // The last session of the thread left: wake the sweeper so that it ends now, not at a
        // horizon that may be a whole (long) timeout away.
        if last {
            self.shared.wake.notify_one();
        }
    }
}

/// Time out the requests of `session` that wait longer than `timeout`, from the sweeper of the
/// current thread (started on the current runtime if it is not running).
pub(super) fn register(session: Weak<Session>, timeout: Duration) -> Registration {
    let shared = LOCAL.with(Arc::clone);
    let now = Instant::now();
    let (key, start, wake) = {
        let mut st = crate::sync::lock(&shared.state);
        let key = st.next_key;
        st.next_key += 1;
        st.sessions.insert(key, Entry { session, timeout });
        let start = !std::mem::replace(&mut st.running, true);
        let wake = !start && st.horizon.is_some_and(|h| later(now, timeout) < h);
        (key, start, wake)
    };
    if start {
        tokio::spawn(sweep(shared.clone()));
    } else if wake {
        shared.wake.notify_one();
    }
    Registration { shared, key }
}

/// Clears `running` if the sweeper is dropped with its runtime (it did not end by itself).
struct Running {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed {
            let mut st = crate::sync::lock(&self.shared.state);
            st.running = false;
            st.horizon = None;
        }
    }
}

async fn sweep(shared: Arc<Shared>) {
    let mut running = Running {
        shared: shared.clone(),
        armed: true,
    };
    // Sessions that had requests pending when last looked at, by when the oldest is due.
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut horizon = Instant::now();
    loop {
        let now = Instant::now();
        if now >= horizon {
            let everyone: Vec<(u64, Weak<Session>, Duration)> = {
                let mut st = crate::sync::lock(&shared.state);
                if st.sessions.is_empty() {
                    st.running = false;
                    st.horizon = None;
                    // Cleared under the lock: a registration after this starts a new task.
                    running.armed = false;
                    return;
                }
                st.horizon = None;
                let entries = st.sessions.iter();
                entries
                    .map(|(k, e)| (*k, e.session.clone(), e.timeout))
                    .collect()
            };
            due.clear();
            for (key, session, timeout) in everyone {
                if let Some(at) = session.upgrade().and_then(|s| look(&s, timeout, now)) {
                    due.push(Reverse((at, key)));
                }
            }
            let mut st = crate::sync::lock(&shared.state);
            let shortest = st.sessions.values().map(|e| e.timeout).min();
            horizon = later(now, shortest.unwrap_or_default());
            st.horizon = Some(horizon);
        } else {
            while let Some(&Reverse((at, key))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                let entry = crate::sync::lock(&shared.state)
                    .sessions
                    .get(&key)
                    .map(|e| (e.session.clone(), e.timeout));
                let Some((session, timeout)) = entry else {
                    continue;
                };
                if let Some(at) = session.upgrade().and_then(|s| look(&s, timeout, now)) {
                    due.push(Reverse((at, key)));
                }
            }
        }
        let next = due
            .peek()
            .map_or(horizon, |Reverse((at, _))| horizon.min(*at));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            // A session with a shorter timeout came: look at everyone again.
            _ = shared.wake.notified() => horizon = Instant::now(),
        }
    }
}

/// Time out the requests of `s` pending for `timeout` or more at `now`; when its oldest
/// remaining one is due.
fn look(s: &Arc<Session>, timeout: Duration, now: Instant) -> Option<Instant> {
    if s.cancel.is_cancelled() {
        return None;
    }
    // Nothing can be older than `timeout` if the clock has not run that long.
    if let Some(cutoff) = now.checked_sub(timeout) {
        let expired = s.inflight.expire(cutoff);
        if !expired.is_empty() {
            answer(s.clone(), expired, timeout);
        }
    }
    s.inflight.oldest().map(|oldest| later(oldest, timeout))
}

/// `at + d`, or a year from `at` for a `d` beyond what the clock can count (an unbounded
/// timeout, in effect).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

/// Tell the client and the server about each expired request, on a task of the session (a
/// session whose client reads slowly holds up only its own answers, not the sweeper).
fn answer(s: Arc<Session>, expired: Vec<(RequestId, Pending)>, timeout: Duration) {
    let tracker = s.tracker.clone();
    tracker.spawn(async move {
        for (id, p) in expired {
            s.timed_out(id, &p.method, timeout).await;
        }
    });
}

/// Sessions registered with the current thread's sweeper, and whether it runs.
#[cfg(test)]
pub(super) fn registered() -> (usize, bool) {
    LOCAL.with(|shared| {
        let st = crate::sync::lock(&shared.state);
        (st.sessions.len(), st.running)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{Guard, GuardConfig};
    use crate::pipeline::Pipeline;
    use crate::upstream::{UpstreamCtx, UpstreamEvent, UpstreamSpec};
    use bytes::Bytes;
    use shadowcat_proto::Frame;
    use tokio::sync::mpsc;

    /// A session on a child that reads everything into `log` and never answers.
    async fn mute(
        log: &std::path::Path,
        timeout: Duration,
    ) -> (Arc<Session>, mpsc::Receiver<UpstreamEvent>) {
        let cfg = GuardConfig {
            request_timeout: Some(timeout),
            ..GuardConfig::default()
        };
        let ctx = UpstreamCtx {
            guard: Some(Arc::new(Guard::new("mute", &cfg))),
            ..UpstreamCtx::for_test()
        };
        let script = format!("cat > '{}'", log.display());
        let spec = UpstreamSpec::stdio("sh", vec!["-c".into(), script]);
        Session::connect(Arc::from("s"), spec, Pipeline::default(), ctx)
            .await
            .unwrap()
    }

    fn call(id: i64) -> Frame {
        Frame::parse_single(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t"}}}}"#
        )))
        .unwrap()
    }

    /// The next frame the session's client would get (the proxy's own answers come this way).
    async fn next_frame(events: &mut mpsc::Receiver<UpstreamEvent>) -> serde_json::Value {
        let waited = tokio::time::timeout(Duration::from_secs(60), events.recv()).await;
        match waited.expect("an event within a minute").expect("open") {
            UpstreamEvent::Frame { frame, .. } => serde_json::from_slice(frame.raw()).unwrap(),
            UpstreamEvent::Closed { reason, .. } => panic!("closed: {reason}"),
        }
    }

    #[tokio::test]
    async fn one_sweeper_times_out_each_sessions_requests_after_its_own_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (patient, _patient_events) =
            mute(&dir.path().join("p"), Duration::from_secs(600)).await;
        patient.from_client(call(1)).await.unwrap();
        assert_eq!(
            registered(),
            (1, true),
            "the first session starts the sweeper"
        );
        // Let it look at the patient session: it now sleeps until a horizon ten minutes away.
        tokio::task::yield_now().await;
        let (hasty, mut events) = mute(&dir.path().join("h"), Duration::from_millis(200)).await;
        assert_eq!(registered(), (2, true), "one sweeper for both");

        // A request answered in time is not timed out: the first answer is the next one's.
        hasty.from_client(call(2)).await.unwrap();
        let reply = Frame::parse_single(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
        ))
        .unwrap();
        assert!(hasty.from_server(reply).await.is_some());
        hasty.from_client(call(3)).await.unwrap();
        let answer = next_frame(&mut events).await;
        assert_eq!(answer["id"], 3, "{answer}");
        assert_eq!(answer["error"]["code"], -32001, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("tools/call timed out"), "{message}");
        assert!(!hasty.inflight().contains(&RequestId::Number(3)));

        // The server is told to stop working on it.
        let mut log = String::new();
        for _ in 0..600 {
            log = std::fs::read_to_string(dir.path().join("h")).unwrap_or_default();
            if log.contains("notifications/cancelled") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(log.contains(r#""requestId":3"#), "{log}");

        // The patient session's request is still waiting for its own, longer timeout.
        assert!(patient.inflight().contains(&RequestId::Number(1)));

        // Sessions leave when dropped; with none left the sweeper ends. The hasty one leaves
        // first, and the sweeper looks again (its horizon was the hasty timeout away): with only
        // the patient session left, its next horizon is ten minutes away, so the last session
        // to leave must wake it.
        hasty.shutdown().await;
        drop(hasty);
        assert_eq!(registered().0, 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        patient.shutdown().await;
        drop(patient);
        assert_eq!(registered().0, 0);
        for _ in 0..600 {
            if !registered().1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(registered(), (0, false), "the sweeper ended");
    }
}
