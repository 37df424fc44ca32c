//! Contract cases for the event log.

use crate::{LoggedEvent, Retention, SessionStore, StoreError};
use std::time::{Duration, Instant};

/// Event ids are opaque, but every backend's ids are groups of digits separated by `-` (`42`,
/// `1700000000000-3`) that increase when compared group by group as numbers.
fn order_key(id: &str) -> Vec<u64> {
    id.split('-')
        .map(|g| {
            g.parse::<u64>()
                .unwrap_or_else(|_| panic!("event id `{id}` is not digit groups"))
        })
        .collect()
}

fn assert_id_chars(id: &str) {
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "event id `{id}` must be [A-Za-z0-9-]+"
    );
}

async fn append_n(store: &dyn SessionStore, session: &str, stream: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let data = format!("{stream}-{i}");
        ids.push(
            store
                .append_event(session, stream, data.as_bytes())
                .await
                .expect("append"),
        );
    }
    ids
}

fn ids(events: &[LoggedEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn assert_gone(result: Result<Vec<LoggedEvent>, StoreError>, id: &str) {
    match result {
        Err(StoreError::EventGone(got)) => assert_eq!(got, id),
        other => panic!("after `{id}` must be EventGone, got {other:?}"),
    }
}

pub(super) async fn append_ids_increase(store: &dyn SessionStore) {
    let appended = append_n(store, "ev-s", "main", 20).await;
    for id in &appended {
        assert_id_chars(id);
    }
    for pair in appended.windows(2) {
        assert!(
            order_key(&pair[0]) < order_key(&pair[1]),
            "ids must increase: {} then {}",
            pair[0],
            pair[1]
        );
    }
    let read = store
        .events_after("ev-s", "main", None, 100)
        .await
        .expect("events");
    assert_eq!(
        ids(&read),
        appended,
        "read back in append order with the same ids"
    );
    for (i, e) in read.iter().enumerate() {
        assert_eq!(e.data, format!("main-{i}").as_bytes());
    }
    // Payloads are bytes: empty (priming event), binary, large.
    let big = vec![0xAB_u8; 256 * 1024];
    let payloads: [&[u8]; 3] = [b"", &[0, 255, 10, 13, 0], &big];
    let mut pids = Vec::new();
    for p in payloads {
        pids.push(store.append_event("ev-s", "bin", p).await.expect("append"));
    }
    let read = store
        .events_after("ev-s", "bin", None, 10)
        .await
        .expect("events");
    assert_eq!(ids(&read), pids);
    for (e, p) in read.iter().zip(payloads) {
        assert_eq!(e.data.as_slice(), p);
    }
}

pub(super) async fn batches_append_in_order(store: &dyn SessionStore) {
    let first = append_n(store, "ba-s", "main", 2).await;
    let data: Vec<Vec<u8>> = (0..50).map(|i| format!("b{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let batch = store
        .append_events("ba-s", "main", &refs)
        .await
        .expect("append batch");
    assert_eq!(batch.len(), 50, "one id per event");
    let last = append_n(store, "ba-s", "main", 1).await;
    let all: Vec<String> = first.iter().chain(&batch).chain(&last).cloned().collect();
    for pair in all.windows(2) {
        assert!(
            order_key(&pair[0]) < order_key(&pair[1]),
            "ids must increase across single and batched appends: {} then {}",
            pair[0],
            pair[1]
        );
    }
    let read = store
        .events_after("ba-s", "main", Some(&first[1]), 100)
        .await
        .expect("events");
    assert_eq!(ids(&read), all[2..].to_vec());
    for (i, e) in read.iter().take(50).enumerate() {
        assert_eq!(e.data, format!("b{i}").as_bytes());
    }
    assert!(
        store
            .append_events("ba-s", "main", &[])
            .await
            .expect("empty batch")
            .is_empty()
    );
}

pub(super) async fn streams_are_independent(store: &dyn SessionStore) {
    let mut a_ids = Vec::new();
    let mut b_ids = Vec::new();
    for i in 0..5 {
        a_ids.push(
            store
                .append_event("ind-s", "A", format!("A{i}").as_bytes())
                .await
                .expect("append"),
        );
        b_ids.push(
            store
                .append_event("ind-s", "B", format!("B{i}").as_bytes())
                .await
                .expect("append"),
        );
        store
            .append_event("ind-other", "A", format!("X{i}").as_bytes())
            .await
            .expect("append");
    }
    for pair in b_ids.windows(2) {
        assert!(order_key(&pair[0]) < order_key(&pair[1]));
    }
    let a = store
        .events_after("ind-s", "A", None, 100)
        .await
        .expect("A");
    let b = store
        .events_after("ind-s", "B", None, 100)
        .await
        .expect("B");
    let x = store
        .events_after("ind-other", "A", None, 100)
        .await
        .expect("other A");
    assert_eq!(ids(&a), a_ids);
    assert_eq!(ids(&b), b_ids);
    assert!(
        a.iter().all(|e| e.data.starts_with(b"A")),
        "stream A holds only A's events"
    );
    assert!(
        b.iter().all(|e| e.data.starts_with(b"B")),
        "stream B holds only B's events"
    );
    assert!(
        x.iter().all(|e| e.data.starts_with(b"X")),
        "same stream name, other session"
    );
    assert_eq!(x.len(), 5);
    let b_after = store
        .events_after("ind-s", "B", Some(&b_ids[1]), 100)
        .await
        .expect("B after");
    assert_eq!(ids(&b_after), b_ids[2..].to_vec());
    assert!(
        store
            .events_after("ind-s", "C", None, 100)
            .await
            .expect("unknown stream")
            .is_empty()
    );
    // Trimming one stream leaves the others alone.
    let dropped = store
        .trim_events(
            "ind-s",
            "A",
            Retention {
                max_events: Some(0),
                max_age: None,
            },
        )
        .await
        .expect("trim");
    assert_eq!(dropped, 5);
    assert_eq!(
        store
            .events_after("ind-s", "B", None, 100)
            .await
            .expect("B")
            .len(),
        5
    );
    assert_eq!(
        store
            .events_after("ind-other", "A", None, 100)
            .await
            .expect("X")
            .len(),
        5
    );
}

pub(super) async fn events_after_reads(store: &dyn SessionStore) {
    let all = append_n(store, "ea-s", "main", 6).await;
    let got = store
        .events_after("ea-s", "main", Some(&all[1]), 100)
        .await
        .expect("after 1");
    assert_eq!(ids(&got), all[2..].to_vec(), "exclusive of `after`");
    assert_eq!(got[0].data, b"main-2");
    let got = store
        .events_after("ea-s", "main", Some(&all[0]), 2)
        .await
        .expect("limit");
    assert_eq!(ids(&got), all[1..3].to_vec(), "limit honored");
    let got = store
        .events_after("ea-s", "main", None, 3)
        .await
        .expect("limit from start");
    assert_eq!(ids(&got), all[..3].to_vec());
    let got = store
        .events_after("ea-s", "main", Some(&all[5]), 10)
        .await
        .expect("after last");
    assert!(got.is_empty(), "nothing after the newest event");
    assert!(
        store
            .events_after("ea-s", "main", None, 0)
            .await
            .expect("limit 0")
            .is_empty()
    );
    // Appends after a read are seen by the next read from the same point.
    let more = store
        .append_event("ea-s", "main", b"late")
        .await
        .expect("append");
    let got = store
        .events_after("ea-s", "main", Some(&all[5]), 10)
        .await
        .expect("after last");
    assert_eq!(ids(&got), vec![more]);
    assert_eq!(got[0].data, b"late");
}

pub(super) async fn unknown_event_is_gone(store: &dyn SessionStore) {
    let all = append_n(store, "ug-s", "main", 3).await;
    // Non-canonical spellings of a real id are unknown too.
    let padded = format!("0{}", all[0]);
    let plus = format!("+{}", all[0]);
    for bogus in [
        "999999999",
        "99999999999999-0",
        "0",
        "0-0",
        "not-an-id",
        "",
        &padded,
        &plus,
    ] {
        assert_gone(
            store.events_after("ug-s", "main", Some(bogus), 10).await,
            bogus,
        );
    }
    // A real id, but of another session / an empty stream.
    assert_gone(
        store
            .events_after("ug-other", "main", Some(&all[0]), 10)
            .await,
        &all[0],
    );
    assert_gone(
        store.events_after("ug-s", "empty", Some(&all[0]), 10).await,
        &all[0],
    );
    // The stream itself is intact.
    assert_eq!(
        store
            .events_after("ug-s", "main", Some(&all[0]), 10)
            .await
            .expect("ok")
            .len(),
        2
    );
}

pub(super) async fn trim_by_max_events(store: &dyn SessionStore) {
    let all = append_n(store, "tm-s", "main", 10).await;
    let keep4 = Retention {
        max_events: Some(4),
        max_age: None,
    };
    assert_eq!(
        store
            .trim_events("tm-s", "main", keep4)
            .await
            .expect("trim"),
        6
    );
    let left = store
        .events_after("tm-s", "main", None, 100)
        .await
        .expect("events");
    assert_eq!(ids(&left), all[6..].to_vec(), "the newest are kept");
    assert_gone(
        store.events_after("tm-s", "main", Some(&all[2]), 10).await,
        &all[2],
    );
    assert_gone(
        store.events_after("tm-s", "main", Some(&all[5]), 10).await,
        &all[5],
    );
    let after6 = store
        .events_after("tm-s", "main", Some(&all[6]), 10)
        .await
        .expect("after kept");
    assert_eq!(ids(&after6), all[7..].to_vec());
    assert_eq!(
        store
            .trim_events("tm-s", "main", keep4)
            .await
            .expect("trim again"),
        0
    );
    assert_eq!(
        store
            .trim_events("tm-s", "nothing", keep4)
            .await
            .expect("trim empty"),
        0
    );
    assert_eq!(
        store
            .trim_events("tm-s", "main", Retention::default())
            .await
            .expect("no retention"),
        0
    );
    // Ids are not reused after trimming.
    let next = store
        .append_event("tm-s", "main", b"new")
        .await
        .expect("append");
    assert!(order_key(&all[9]) < order_key(&next));
    assert!(!all.contains(&next));
}

pub(super) async fn trim_by_max_age(store: &dyn SessionStore) {
    append_n(store, "ta-s", "stale", 2).await;
    let hour = Retention {
        max_events: None,
        max_age: Some(Duration::from_secs(3600)),
    };
    let max_age = Duration::from_millis(200);
    let by_age = Retention {
        max_events: None,
        max_age: Some(max_age),
    };
    // Old events (400 ms old once the sleep is over: ages only grow) are trimmed, and a fresh
    // one appended just before the trim stays. The fresh event is at most `took` old when the
    // store trims (plus its millisecond rounding); on a machine too slow to trim within 200 ms
    // of appending it may age out too, so the attempt is repeated (on a new stream) until one
    // is fast enough for the exact outcome to be asserted — it is never skipped.
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let stream = format!("main-{attempt}");
        let old = append_n(store, "ta-s", &stream, 3).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let before_fresh = Instant::now();
        let fresh = store
            .append_event("ta-s", &stream, b"fresh")
            .await
            .expect("append");
        let within_hour = store
            .trim_events("ta-s", &stream, hour)
            .await
            .expect("trim 1h");
        let dropped = store
            .trim_events("ta-s", &stream, by_age)
            .await
            .expect("trim 200ms");
        let took = before_fresh.elapsed();
        assert_eq!(within_hour, 0, "nothing is an hour old");
        let left = ids(&store
            .events_after("ta-s", &stream, None, 100)
            .await
            .expect("events"));
        for id in &old {
            assert!(!left.contains(id), "event {id} (400ms old) must be trimmed");
        }
        assert_gone(
            store.events_after("ta-s", &stream, Some(&old[0]), 10).await,
            &old[0],
        );
        if took + Duration::from_millis(2) < max_age {
            assert_eq!(dropped, 3);
            assert_eq!(left, vec![fresh]);
            break;
        }
        assert!(dropped == 3 || dropped == 4, "dropped {dropped}");
        assert!(
            Instant::now() < deadline,
            "no attempt trimmed within {max_age:?} of appending (last took {took:?})"
        );
    }
    // A stream whose events are all too old ends up empty.
    assert_eq!(
        store
            .trim_events("ta-s", "stale", by_age)
            .await
            .expect("trim stale"),
        2
    );
    assert!(
        store
            .events_after("ta-s", "stale", None, 10)
            .await
            .expect("events")
            .is_empty()
    );
    // Both limits together: age first, then count.
    append_n(store, "ta-s", "both", 3).await;
    let both = Retention {
        max_events: Some(1),
        max_age: Some(Duration::from_secs(3600)),
    };
    assert_eq!(
        store
            .trim_events("ta-s", "both", both)
            .await
            .expect("trim both"),
        2
    );
}

/// The ids left in `stream` of `session`, oldest first.
async fn left(store: &dyn SessionStore, session: &str, stream: &str) -> Vec<String> {
    ids(&store
        .events_after(session, stream, None, 1000)
        .await
        .expect("events"))
}

async fn append_sized(
    store: &dyn SessionStore,
    session: &str,
    stream: &str,
    n: usize,
    size: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let data = vec![b'a' + (i % 26) as u8; size];
        ids.push(
            store
                .append_event(session, stream, &data)
                .await
                .expect("append"),
        );
    }
    ids
}

pub(super) async fn trim_session_by_bytes(store: &dyn SessionStore) {
    // One stream of ten 100-byte events.
    let all = append_sized(store, "tb-s", "main", 10, 100).await;
    assert_eq!(
        store.trim_session_bytes("tb-s", 1000).await.expect("trim"),
        0,
        "exactly at the budget: nothing goes"
    );
    assert_eq!(
        store.trim_session_bytes("tb-s", 450).await.expect("trim"),
        6,
        "450 bytes hold the newest four"
    );
    assert_eq!(left(store, "tb-s", "main").await, all[6..].to_vec());
    assert_gone(
        store.events_after("tb-s", "main", Some(&all[5]), 10).await,
        &all[5],
    );
    let after6 = store
        .events_after("tb-s", "main", Some(&all[6]), 10)
        .await
        .expect("after a kept event");
    assert_eq!(ids(&after6), all[7..].to_vec());
    assert_eq!(
        store.trim_session_bytes("tb-s", 400).await.expect("trim"),
        0
    );
    assert_eq!(
        store.trim_session_bytes("tb-s", 399).await.expect("trim"),
        1
    );
    assert_eq!(left(store, "tb-s", "main").await, all[7..].to_vec());
    // A newest event larger than the budget goes too, with everything older; ids are not reused.
    let big = append_sized(store, "tb-s", "main", 1, 1000).await;
    assert_eq!(
        store.trim_session_bytes("tb-s", 500).await.expect("trim"),
        4
    );
    assert!(left(store, "tb-s", "main").await.is_empty());
    let next = append_sized(store, "tb-s", "main", 1, 10).await;
    assert!(order_key(&big[0]) < order_key(&next[0]));
    assert_eq!(
        store
            .trim_session_bytes("tb-unknown", 0)
            .await
            .expect("trim unknown"),
        0
    );

    // Events dropped by count retention no longer count against the budget.
    append_sized(store, "tb-c", "main", 10, 100).await;
    store
        .trim_events(
            "tb-c",
            "main",
            Retention {
                max_events: Some(2),
                max_age: None,
            },
        )
        .await
        .expect("trim by count");
    assert_eq!(
        store.trim_session_bytes("tb-c", 500).await.expect("trim"),
        0,
        "200 bytes are left, within 500"
    );
    assert_eq!(left(store, "tb-c", "main").await.len(), 2);

    // The budget covers all of a session's streams together, and only that session.
    let a = append_sized(store, "tb-m", "A", 5, 100).await;
    let b = append_sized(store, "tb-m", "B", 5, 100).await;
    append_sized(store, "tb-o", "A", 5, 100).await;
    assert_eq!(
        store.trim_session_bytes("tb-m", 650).await.expect("trim"),
        4,
        "650 bytes hold six of the session's ten 100-byte events"
    );
    let (la, lb) = (
        left(store, "tb-m", "A").await,
        left(store, "tb-m", "B").await,
    );
    assert_eq!(la.len() + lb.len(), 6);
    assert_eq!(la, a[a.len() - la.len()..].to_vec(), "A keeps its newest");
    assert_eq!(lb, b[b.len() - lb.len()..].to_vec(), "B keeps its newest");
    assert_eq!(
        lb.last(),
        b.last(),
        "the newest event of the session is kept"
    );
    assert_eq!(
        left(store, "tb-o", "A").await.len(),
        5,
        "other sessions untouched"
    );
}

pub(super) async fn ping_ok(store: &dyn SessionStore) {
    store.ping().await.expect("ping");
}
