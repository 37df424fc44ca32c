//! Helpers shared by the backends.

use crate::{SessionFilter, SessionRecord};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parse an event id handed out as a canonical decimal integer; anything else (`+5`, `05`, or not
/// a number) was never handed out, so it is `EventGone`.
pub(crate) fn parse_event_id<T: std::str::FromStr + ToString>(id: &str) -> crate::StoreResult<T> {
    id.parse::<T>()
        .ok()
        .filter(|n| n.to_string() == id)
        .ok_or_else(|| crate::StoreError::EventGone(id.to_owned()))
}

/// A listing page from up to `limit + 1` matches in id order: the extra one only says that
/// another page follows, whose cursor is the last id kept.
pub(crate) fn page(mut sessions: Vec<crate::SessionRecord>, limit: usize) -> crate::SessionPage {
    let next = if sessions.len() > limit {
        sessions.truncate(limit);
        sessions.last().map(|r| r.id.clone())
    } else {
        None
    };
    crate::SessionPage { sessions, next }
}

/// A store spec or URL as messages show it: without user information (`redis://:secret@h` →
/// `redis://h`) or query (`?password=…`).
pub(crate) fn url_label(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{hosts}{path}")
        }
        None => match url.rsplit_once('@') {
            Some((_, h)) => format!("…@{h}"),
            None => url.to_owned(),
        },
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Saturating `Duration` → whole milliseconds.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sessions whose `last_active_ms` is below this are expired; `None`: nothing is.
pub(crate) fn expiry_cutoff(now_ms: u64, idle_ttl: Duration) -> Option<u64> {
    now_ms.checked_sub(duration_ms(idle_ttl))
}

/// Whether `rec` is selected by `filter`.
pub(crate) fn matches(filter: &SessionFilter, rec: &SessionRecord) -> bool {
    filter.status.is_none_or(|s| s == rec.status)
        && filter.route.as_ref().is_none_or(|r| *r == rec.route)
        && filter
            .owner
            .as_ref()
            .is_none_or(|o| rec.owner.as_ref() == Some(o))
        && filter
            .principal
            .as_ref()
            .is_none_or(|p| rec.principal.as_ref() == Some(p))
        && filter.idle_since_ms.is_none_or(|t| rec.last_active_ms <= t)
}

/// Page size actually used for a requested `limit` (at least 1).
pub(crate) fn page_limit(limit: usize) -> usize {
    limit.max(1)
}

/// Lock `m`, carrying on through poisoning: the guarded data (maps, counters, idle
/// connections) is consistent between statements, so another thread's panic leaves nothing
/// half-written to refuse.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hide_credentials() {
        assert_eq!(url_label("redis://:pw@h:1/0"), "redis://h:1/0");
        assert_eq!(
            url_label("redis+cluster://u:p@a:1,b:2"),
            "redis+cluster://a:1,b:2"
        );
        assert_eq!(url_label("redis+sentinel://s/m"), "redis+sentinel://s/m");
        assert_eq!(
            url_label("redis+unix:///tmp/r.sock?db=1&pass=pw"),
            "redis+unix:///tmp/r.sock"
        );
        assert_eq!(url_label("redis:/:pw@h"), "…@h");
        assert_eq!(url_label("sqlite:a.db"), "sqlite:a.db");
    }

    #[test]
    fn cutoff_is_strict_and_saturating() {
        assert_eq!(expiry_cutoff(10_000, Duration::from_secs(1)), Some(9_000));
        assert_eq!(expiry_cutoff(500, Duration::from_secs(1)), None);
    }
}
