//! The proxy-owned SSE event log: every SSE event the front sends is appended to the session
//! store first, under an id `<stream>.<store id>` that names its stream; a `GET` with
//! `Last-Event-ID` replays the missed events of that stream only.

use shadowcat_store::{LoggedEvent, Retention, SessionStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Events read per store round trip during a replay.
const REPLAY_PAGE: usize = 512;
/// Apply retention every this many appends of a session.
const TRIM_EVERY: u32 = 64;

/// The event log of one HTTP front.
pub struct EventLog {
    store: Arc<dyn SessionStore>,
    retention: Retention,
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
    /// A log on `store` keeping `retention` per stream.
    pub fn new(store: Arc<dyn SessionStore>, retention: Retention) -> Self {
        EventLog { store, retention }
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
        counter: &AtomicU32,
    ) -> Option<Arc<str>> {
        match self.store.append_event(session, stream, data).await {
            Ok(id) => {
                let due = counter.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1;
                if due
                    && let Err(e) = self
                        .store
                        .trim_events(session, stream, self.retention)
                        .await
                {
                    tracing::warn!(error = %e, "trimming the event log failed");
                }
                Some(Arc::from(format!("{stream}.{id}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, stream, "could not log an SSE event; sending it without an id");
                None
            }
        }
    }

    /// Events of `stream` after the store id `after` (or from the start), up to and including
    /// the SSE id `until` when given (or to the end of the log).
    pub async fn replay(
        &self,
        session: &str,
        stream: &str,
        after: Option<&str>,
        until: Option<&str>,
    ) -> Result<Vec<Replayed>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = after.map(str::to_owned);
        loop {
            let page: Vec<LoggedEvent> = self
                .store
                .events_after(session, stream, cursor.as_deref(), REPLAY_PAGE)
                .await?;
            let n = page.len();
            for ev in page {
                let sse_id: Arc<str> = Arc::from(format!("{stream}.{}", ev.id));
                let last = until.is_some_and(|u| u == &*sse_id);
                cursor = Some(ev.id);
                out.push((sse_id, ev.data));
                if last {
                    return Ok(out);
                }
            }
            if n < REPLAY_PAGE {
                return Ok(out);
            }
        }
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
