//! Tests of the client ↔ backend prepared-statement id map.

use bytes::Bytes;

use super::*;

fn sql(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

#[test]
fn client_ids_count_from_one_and_map_to_backend_ids() {
    let mut map = StatementMap::new();
    assert!(map.is_empty());
    let a = map.prepared(70, sql("SELECT ?"), 1, 1);
    let b = map.prepared(71, sql("INSERT INTO t VALUES (?, ?)"), 2, 0);
    assert_eq!((a, b), (1, 2));
    assert_eq!(map.backend_id(a), Some(70));
    assert_eq!(map.backend_id(b), Some(71));
    assert_eq!(map.backend_id(3), None);
    assert_eq!(map.len(), 2);
    assert_eq!(map.sql_bytes(), 8 + 27);
    let s = map.get(b).expect("statement b");
    assert_eq!(
        (s.params, s.columns, s.sql.as_ref()),
        (2, 0, &b"INSERT INTO t VALUES (?, ?)"[..])
    );
}

#[test]
fn closing_forgets_and_ids_are_not_reused() {
    let mut map = StatementMap::new();
    let a = map.prepared(5, sql("SELECT 1"), 0, 1);
    map.closed(a);
    map.closed(a);
    map.closed(99);
    assert_eq!(map.backend_id(a), None);
    assert_eq!(map.sql_bytes(), 0);
    assert_eq!(map.prepared(5, sql("SELECT 1"), 0, 1), 2);
    map.clear();
    assert!(map.is_empty());
    assert_eq!(map.sql_bytes(), 0);
    assert_eq!(
        map.prepared(1, sql("SELECT 2"), 0, 1),
        3,
        "ids keep counting after a reset"
    );
}

#[test]
fn a_new_backend_unbinds_until_rebound() {
    let mut map = StatementMap::new();
    let a = map.prepared(10, sql("SELECT ?"), 1, 1);
    let b = map.prepared(11, sql("SELECT ?, ?"), 2, 2);
    map.unbind_all();
    assert_eq!(map.backend_id(a), None);
    assert!(map.get(a).is_some_and(|s| !s.bound));
    map.rebind(a, 1);
    assert_eq!(map.backend_id(a), Some(1));
    assert_eq!(map.backend_id(b), None);
    map.rebind(42, 7);
    assert_eq!(map.len(), 2, "rebinding an unknown id adds nothing");
    let listed: Vec<(u32, u32, bool)> = map
        .iter()
        .map(|(id, s)| (id, s.backend_id, s.bound))
        .collect();
    assert_eq!(listed, [(a, 1, true), (b, 11, false)]);
}

#[test]
fn ids_wrap_around_without_zero_or_collisions() {
    let mut map = StatementMap {
        next_id: u32::MAX - 1,
        ..StatementMap::new()
    };
    let near_end = map.prepared(1, sql("a"), 0, 0);
    let last = map.prepared(2, sql("b"), 0, 0);
    assert_eq!((near_end, last), (u32::MAX - 1, u32::MAX));
    let first = map.prepared(3, sql("c"), 0, 0);
    assert_eq!(first, 1);
    // 2 is free; the next wrap must skip the ids still in use.
    map.next_id = u32::MAX;
    assert_eq!(map.prepared(4, sql("d"), 0, 0), 2);
    assert_eq!(map.backend_id(u32::MAX), Some(2));
}
