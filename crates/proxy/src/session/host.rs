//! The session host: one table of every live session of a front, whatever its kind
//! (Streamable HTTP, legacy HTTP+SSE, sessions held for 2026-07-28 clients, sessions adopted
//! from another replica), and the one admission check they all pass.
//!
//! Admission is a *reservation*: [`Host::reserve`] counts the session (globally and against its
//! principal) under one lock before anything is spawned, so concurrent creations can never
//! overshoot a limit, whatever front they arrive on. The [`Slot`] it returns is handed to the
//! [`Session`] once it exists ([`Session::admit`]): it binds the session to its principal,
//! lists it in the table, and is released when the session shuts down (or is dropped), so a
//! creation that fails half-way gives its slot back by dropping it.

use super::Session;
use super::events::EventLog;
use super::records::Records;
use crate::error::ProxyError;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// What kind of session a table entry is (where its client comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Streamable HTTP session (`initialize` on `/mcp`).
    Streamable,
    /// A legacy HTTP+SSE session (`GET …/sse`).
    Legacy,
    /// A session-based session held to serve 2026-07-28 clients.
    Held,
    /// A session created by another replica, continued here.
    Adopted,
    /// The one session of `forward stdio` (the proxy's own stdin/stdout).
    Stdio,
}

impl Kind {
    /// The name used in the admin API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Streamable => "streamable-http",
            Kind::Legacy => "legacy-sse",
            Kind::Held => "held",
            Kind::Adopted => "adopted",
            Kind::Stdio => "stdio",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Session limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most live sessions of every kind together.
    pub max_sessions: usize,
    /// Most live sessions of one authenticated principal (`None`: no per-principal limit).
    pub max_per_principal: Option<usize>,
}

/// One live session as the host lists it.
#[derive(Clone)]
pub struct Entry {
    /// Its kind.
    pub kind: Kind,
    /// The route it belongs to.
    pub route: Arc<str>,
    session: Weak<Session>,
}

impl Entry {
    /// The session, unless it is already gone.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.upgrade()
    }
}

#[derive(Default)]
struct Inner {
    closed: bool,
    /// Reserved slots, admitted or not yet.
    reserved: usize,
    by_principal: HashMap<Arc<str>, usize>,
    live: HashMap<Arc<str>, Entry>,
}

/// Every live session of a front, admission, and where its sessions' state is kept (records
/// and, for fronts that resume streams, the SSE event log).
pub struct Host {
    limits: Limits,
    inner: Mutex<Inner>,
    records: Arc<Records>,
    events: Option<Arc<EventLog>>,
}

impl Host {
    /// A host enforcing `limits`, keeping its sessions' records in `records` and, when given,
    /// the SSE events they send in `events`.
    pub fn new(limits: Limits, records: Arc<Records>, events: Option<Arc<EventLog>>) -> Arc<Self> {
        Arc::new(Host {
            limits,
            inner: Mutex::new(Inner::default()),
            records,
            events,
        })
    }

    /// The session records.
    pub fn records(&self) -> &Arc<Records> {
        &self.records
    }

    /// The SSE event log, if the front keeps one.
    pub fn events(&self) -> Option<&Arc<EventLog>> {
        self.events.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Reserve room for one more session of `principal` (`None`: unauthenticated), before
    /// anything is spawned for it. Refused when shutting down or at a limit.
    pub fn reserve(self: &Arc<Self>, principal: Option<&str>) -> Result<Slot, ProxyError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(ProxyError::ShuttingDown);
        }
        if inner.reserved >= self.limits.max_sessions {
            return Err(ProxyError::SessionLimit(self.limits.max_sessions));
        }
        let principal: Option<Arc<str>> = principal.map(Arc::from);
        if let (Some(p), Some(max)) = (&principal, self.limits.max_per_principal) {
            let n = inner.by_principal.get(p).copied().unwrap_or(0);
            if n >= max {
                return Err(ProxyError::PrincipalSessionLimit(max));
            }
        }
        inner.reserved += 1;
        if let Some(p) = &principal {
            *inner.by_principal.entry(p.clone()).or_default() += 1;
        }
        Ok(Slot {
            host: self.clone(),
            principal,
            listed: None,
        })
    }

    /// Refuse every further reservation (shutdown has begun).
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Reserved slots: live sessions and those being created.
    pub fn reserved(&self) -> usize {
        self.lock().reserved
    }

    /// Live sessions of every kind.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session (id and entry).
    pub fn entries(&self) -> Vec<(Arc<str>, Entry)> {
        self.lock()
            .live
            .iter()
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect()
    }

    /// The entry of session `id`, if it is live here.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.lock().live.get(id).cloned()
    }

    /// Requests still in flight across every session.
    pub fn inflight(&self) -> usize {
        self.entries()
            .iter()
            .filter_map(|(_, e)| e.session())
            .map(|s| s.inflight().len())
            .sum()
    }

    fn release(&self, principal: Option<&Arc<str>>, listed: Option<&Arc<str>>) {
        let mut inner = self.lock();
        inner.reserved = inner.reserved.saturating_sub(1);
        if let Some(p) = principal
            && let Some(n) = inner.by_principal.get_mut(p)
        {
            *n -= 1;
            if *n == 0 {
                inner.by_principal.remove(p);
            }
        }
        if let Some(id) = listed {
            inner.live.remove(id);
        }
    }
}

/// A reserved place for one session. Dropping it gives the place back (and, once the session
/// was admitted with it, removes the session from the host's table).
pub struct Slot {
    host: Arc<Host>,
    principal: Option<Arc<str>>,
    listed: Option<Arc<str>>,
}

impl Slot {
    /// The principal the slot was reserved for.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// List `session` in the host's table.
    pub(super) fn list(&mut self, session: &Arc<Session>, kind: Kind, route: Arc<str>) {
        let id = session.id().clone();
        let entry = Entry {
            kind,
            route,
            session: Arc::downgrade(session),
        };
        self.host.lock().live.insert(id.clone(), entry);
        self.listed = Some(id);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("principal", &self.principal)
            .field("listed", &self.listed)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.host
            .release(self.principal.as_ref(), self.listed.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(max: usize, per: Option<usize>) -> Arc<Host> {
        let records = Records::new(
            Arc::new(shadowcat_store::MemoryStore::new()),
            Arc::from("test"),
            std::time::Duration::from_secs(1),
            16,
            &tokio_util::task::TaskTracker::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let limits = Limits {
            max_sessions: max,
            max_per_principal: per,
        };
        Host::new(limits, Arc::new(records), None)
    }

    #[tokio::test]
    async fn the_global_limit_counts_reservations_and_frees_on_drop() {
        let h = host(2, None);
        let a = h.reserve(None).unwrap();
        let _b = h.reserve(Some("alice")).unwrap();
        assert!(matches!(h.reserve(None), Err(ProxyError::SessionLimit(2))));
        drop(a);
        assert_eq!(h.reserved(), 1);
        assert!(h.reserve(None).is_ok());
    }

    #[tokio::test]
    async fn the_per_principal_limit_holds_per_principal() {
        let h = host(10, Some(1));
        let a = h.reserve(Some("alice")).unwrap();
        assert!(matches!(
            h.reserve(Some("alice")),
            Err(ProxyError::PrincipalSessionLimit(1))
        ));
        // Another principal, and unauthenticated sessions, are not counted against alice.
        let _b = h.reserve(Some("bob")).unwrap();
        let _c = h.reserve(None).unwrap();
        let _d = h.reserve(None).unwrap();
        drop(a);
        assert!(h.reserve(Some("alice")).is_ok());
    }

    #[tokio::test]
    async fn a_closed_host_admits_nothing() {
        let h = host(10, None);
        h.close();
        assert!(matches!(h.reserve(None), Err(ProxyError::ShuttingDown)));
    }

    #[tokio::test]
    async fn racing_reservations_never_overshoot() {
        let h = host(3, None);
        let slots = std::sync::Mutex::new(Vec::new());
        let refused = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| match h.reserve(None) {
                    Ok(slot) => slots.lock().unwrap().push(slot),
                    Err(_) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(slots.lock().unwrap().len(), 3);
        assert_eq!(refused.into_inner(), 13);
    }
}
