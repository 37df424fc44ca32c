//! Contract cases for shared documents (tool pins).

use crate::SessionStore;

pub(super) async fn documents_round_trip(store: &dyn SessionStore) {
    assert_eq!(store.doc_get("pins", "a").await.expect("get"), None);
    assert!(store.doc_list("pins").await.expect("list").is_empty());
    store.doc_put("pins", "b", b"two").await.expect("put");
    store.doc_put("pins", "a", b"one").await.expect("put");
    store
        .doc_put("other", "a", b"elsewhere")
        .await
        .expect("put");
    // Binary values round-trip; a second put replaces.
    store
        .doc_put("pins", "c", &[0, 159, 146, 150])
        .await
        .expect("put");
    store.doc_put("pins", "b", b"two again").await.expect("put");
    assert_eq!(
        store.doc_get("pins", "b").await.expect("get").as_deref(),
        Some(&b"two again"[..])
    );
    let listed = store.doc_list("pins").await.expect("list");
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"], "one namespace, ordered by key");
    assert_eq!(listed[2].1, vec![0, 159, 146, 150]);
    assert!(store.doc_delete("pins", "a").await.expect("delete"));
    assert!(!store.doc_delete("pins", "a").await.expect("delete again"));
    assert_eq!(
        store.doc_get("other", "a").await.expect("get").as_deref(),
        Some(&b"elsewhere"[..])
    );
    assert_eq!(store.doc_list("pins").await.expect("list").len(), 2);
}
