//! The proxy-owned SSE event log: every SSE event the front sends is appended to the session
//! store first, under an id `<stream>.<store id>` that names its stream; a `GET` with
//! `Last-Event-ID` replays the missed events of that stream only.
//!
//! Retention: per stream, the count and age limits ([`Retention`]) every [`TRIM_EVERY`] appends
//! of a session; per session, a byte budget checked whenever an eighth of it has been appended
//! since the last check (so a session's log exceeds it by at most that much and one burst);
//! finished POST streams are dropped whole after a grace period (the front's reaper calls
//! [`EventLog::drop_stream`]).

use shadowcat_store::{LoggedEvent, Retention, SessionStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Events read per store round trip during a replay.
const REPLAY_PAGE: usize = 512;
/// Apply retention every this many appends of a session.
const TRIM_EVERY: u32 = 64;

/// The event log of one HTTP front.
pub struct EventLog {
    store: Arc<dyn SessionStore>,
    retention: Retention,
    max_bytes: u64,
}

/// One session's appends since retention last ran (count and payload bytes).
#[derive(Debug, Default)]
pub struct LogCounters {
    appends: AtomicU32,
    bytes: AtomicU64,
}

/// A replayed event: its SSE id and payload (empty for priming events).
pub type Replayed = (Arc<str>, Vec<u8>);

/// Split an SSE id we issued into (stream, store id).
pub fn parse_event_id(id: &str) -> Option<(&str, &str)> {
    let (stream, event) = id.split_once('.')?;
    let stream_ok = stream == "g"
        || (stream.len() > 1
            && stream.starts_with('p')
            && stream[1..].bytes().all(|b| b.is_ascii_digit()));
    let event_ok = !event.is_empty()
        && event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (stream_ok && event_ok).then_some((stream, event))
}

impl EventLog {
    /// A log on `store` keeping `retention` per stream and at most `max_bytes` of payload per
    /// session.
    pub fn new(store: Arc<dyn SessionStore>, retention: Retention, max_bytes: u64) -> Self {
        EventLog {
            store,
            retention,
            max_bytes,
        }
    }

    /// The store behind the log.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Append an event; returns its SSE id, or `None` when the store failed (the event is then
    /// sent without an id, so the client cannot resume past it — logged as a warning).
    pub async fn append(
        &self,
        session: &str,
        stream: &str,
        data: &[u8],
        counters: &LogCounters,
    ) -> Option<Arc<str>> {
        match self.store.append_event(session, stream, data).await {
            Ok(id) => {
                self.appended(session, stream, 1, data.len() as u64, counters)
                    .await;
                Some(Arc::from(format!("{stream}.{id}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, stream, "could not log an SSE event; sending it without an id");
                None
            }
        }
    }

    /// `n` events of `bytes` payload were appended to `stream`: apply the stream's retention
    /// every [`TRIM_EVERY`] appends of the session, and the session's byte budget whenever an
    /// eighth of it was appended since the last check.
    async fn appended(
        &self,
        session: &str,
        stream: &str,
        n: u32,
        bytes: u64,
        counters: &LogCounters,
    ) {
        let before = counters.appends.fetch_add(n, Ordering::Relaxed);
        if (before % TRIM_EVERY) + n >= TRIM_EVERY
            && let Err(e) = self
                .store
                .trim_events(session, stream, self.retention)
                .await
        {
            tracing::warn!(error = %e, "trimming the event log failed");
        }
        let since = counters.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if since >= (self.max_bytes / 8).max(1) {
            counters.bytes.store(0, Ordering::Relaxed);
            match self.store.trim_session_bytes(session, self.max_bytes).await {
                Ok(0) => {}
                Ok(dropped) => tracing::debug!(
                    dropped,
                    max_bytes = self.max_bytes,
                    "the session's event log is over its byte budget; dropped its oldest events"
                ),
                Err(e) => tracing::warn!(error = %e, "trimming the event log failed"),
            }
        }
    }

    /// Drop every event of `stream` (a finished stream whose grace period is over): a later
    /// `Last-Event-ID` on it gets the "events may have been lost" answer.
    pub async fn drop_stream(&self, session: &str, stream: &str) {
        let all = Retention {
            max_events: Some(0),
            max_age: None,
        };
        if let Err(e) = self.store.trim_events(session, stream, all).await {
            tracing::warn!(error = %e, stream, "could not drop a finished stream's events");
        }
    }

    /// Append several events of one stream in one store write; their SSE ids, in order (all
    /// `None` when the store failed: they are then sent without ids).
    pub async fn append_many(
        &self,
        session: &str,
        stream: &str,
        data: &[&[u8]],
        counters: &LogCounters,
    ) -> Vec<Option<Arc<str>>> {
        if let [one] = data {
            return vec![self.append(session, stream, one, counters).await];
        }
        match self.store.append_events(session, stream, data).await {
            Ok(ids) => {
                let bytes = data.iter().map(|d| d.len() as u64).sum();
                self.appended(session, stream, ids.len() as u32, bytes, counters)
                    .await;
                ids.into_iter()
                    .map(|id| Some(Arc::from(format!("{stream}.{id}"))))
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, stream, events = data.len(), "could not log SSE events; sending them without ids");
                vec![None; data.len()]
            }
        }
    }

    /// A replay of `stream` after the store id `after` (or from the start), up to and including
    /// the SSE id `until` when given (or to the end of the log), read a page at a time.
    pub fn replay(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        until: Option<&str>,
    ) -> Replay {
        Replay {
            store: self.store.clone(),
            session: Arc::from(session),
            stream: Arc::from(stream),
            cursor: after.map(str::to_owned),
            until: until.map(Arc::from),
            done: false,
        }
    }
}

/// Logged events read page by page (a client that missed many is sent the first page while
/// the next is read; none is held whole in memory).
pub struct Replay {
    store: Arc<dyn SessionStore>,
    session: Arc<str>,
    stream: Arc<str>,
    cursor: Option<String>,
    until: Option<Arc<str>>,
    done: bool,
}

impl Replay {
    /// The next events; empty when the replay is complete. `EventGone` (on the first page) when
    /// the log no longer holds the id it starts after.
    pub async fn next_page(&mut self) -> Result<Vec<Replayed>, StoreError> {
        if self.done {
            return Ok(Vec::new());
        }
        let page: Vec<LoggedEvent> = self
            .store
            .events_after(
                &self.session,
                &self.stream,
                self.cursor.as_deref(),
                REPLAY_PAGE,
            )
            .await?;
        if page.len() < REPLAY_PAGE {
            self.done = true;
        }
        let mut out = Vec::with_capacity(page.len());
        for ev in page {
            let sse_id: Arc<str> = Arc::from(format!("{}.{}", self.stream, ev.id));
            let last = self.until.as_deref().is_some_and(|u| u == &*sse_id);
            self.cursor = Some(ev.id);
            out.push((sse_id, ev.data));
            if last {
                self.done = true;
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_event_id;

    #[test]
    fn event_ids_name_their_stream() {
        assert_eq!(parse_event_id("g.17"), Some(("g", "17")));
        assert_eq!(
            parse_event_id("p3.1700000000000-0"),
            Some(("p3", "1700000000000-0"))
        );
        for bad in ["", "g", "g.", "x.1", "p.1", "pa.1", "g.1 2", "p1.a.b"] {
            assert_eq!(parse_event_id(bad), None, "{bad}");
        }
    }
}
