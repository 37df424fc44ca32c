//! The backend contract: checks every [`SessionStore`] must pass, for backends' own tests and for
//! tests elsewhere that bring their own store (feature `contract-tests`).
//!
//! ```ignore
//! shadowcat_store::contract::run_all(|| async { MemoryStore::new() }).await;
//! ```
//!
//! Every case gets a fresh, empty store from `make` (for a shared server, give each store its
//! own key prefix or file). Cases panic (assert) on the first violation; the case name is printed
//! to stderr before it runs.

mod docs;
mod events;
mod sessions;

use crate::{SessionRecord, SessionStatus, SessionStore};
use std::future::Future;

macro_rules! cases {
    ($($module:ident :: $name:ident),* $(,)?) => {
        /// Names of all cases, in the order [`run_all`] runs them.
        pub const CASES: &[&str] = &[$(stringify!($name)),*];

        /// Runs every case, each against a fresh store from `make`.
        pub async fn run_all<S, F, Fut>(make: F)
        where
            S: SessionStore,
            F: Fn() -> Fut,
            Fut: Future<Output = S>,
        {
            $(
                eprintln!("contract case: {}", stringify!($name));
                let store = make().await;
                $module::$name(&store).await;
                drop(store);
            )*
        }

        /// Runs the case called `name` against `store`; false if there is no such case.
        pub async fn run_one(name: &str, store: &dyn SessionStore) -> bool {
            match name {
                $(stringify!($name) => { $module::$name(store).await; true })*
                _ => false,
            }
        }
    };
}

cases!(
    sessions::create_get_exists,
    sessions::get_many_in_order,
    sessions::update_and_update_many,
    sessions::touch_many_sets_activity,
    sessions::delete_removes_mapping_and_events,
    sessions::list_filters,
    sessions::list_pagination,
    sessions::count_filters,
    sessions::expire_idle_only,
    sessions::upstream_mapping_follows_updates,
    sessions::composite_state_round_trips,
    sessions::claim_owner_compares_and_sets,
    sessions::concurrent_claims_succeed_once,
    events::append_ids_increase,
    events::batches_append_in_order,
    events::streams_are_independent,
    events::events_after_reads,
    events::unknown_event_is_gone,
    events::trim_by_max_events,
    events::trim_by_max_age,
    events::trim_session_by_bytes,
    events::ping_ok,
    docs::documents_round_trip,
);

/// A fully populated active record with the given id; tests adjust fields from there.
pub fn record(id: &str) -> SessionRecord {
    SessionRecord {
        id: id.to_owned(),
        route: "r1".to_owned(),
        upstream: "http://upstream.test/mcp".to_owned(),
        upstream_session_id: None,
        protocol_version: Some("2025-06-18".to_owned()),
        client_info: Some(
            serde_json::json!({"name": "client", "version": "1.0", "n": 12345678901234_u64}),
        ),
        client_capabilities: Some(
            serde_json::json!({"roots": {"listChanged": true}, "sampling": {}, "list": []}),
        ),
        principal: Some("alice".to_owned()),
        owner: Some("replica-1".to_owned()),
        status: SessionStatus::Active,
        created_ms: 1_700_000_000_000,
        last_active_ms: 1_700_000_000_500,
        composite: None,
    }
}

/// Creates `rec` or panics.
async fn put(store: &dyn SessionStore, rec: &SessionRecord) {
    store
        .create(rec)
        .await
        .unwrap_or_else(|e| panic!("create `{}`: {e}", rec.id));
}
