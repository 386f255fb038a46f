use super::*;
use proptest::prelude::*;
use scandium_storage::{Engine, MemoryEngine};

fn engine_with(pairs: &[(&[u8], &[u8], u64)], now: u64) -> MemoryEngine {
    let engine = MemoryEngine::new();
    let mut batch = WriteBatch::new();
    for (key, value, ttl) in pairs {
        put(&mut batch, Cf::Raw, key.to_vec(), value, *ttl, now);
    }
    engine.write(batch).unwrap();
    engine
}

#[test]
fn expired_values_are_invisible_to_every_read() {
    let engine = engine_with(&[(b"a", b"1", 0), (b"b", b"2", 10), (b"c", b"3", 0)], 100);
    let snap = engine.snapshot();
    assert_eq!(get(&*snap, Cf::Raw, b"b", 109).unwrap(), Some(b"2".to_vec()));
    assert_eq!(get_ttl(&*snap, Cf::Raw, b"b", 105).unwrap(), Some(5));
    assert_eq!(get_ttl(&*snap, Cf::Raw, b"a", 105).unwrap(), Some(0), "no TTL reads as 0");
    assert_eq!(get(&*snap, Cf::Raw, b"b", 110).unwrap(), None);
    assert_eq!(get_ttl(&*snap, Cf::Raw, b"b", 110).unwrap(), None);
    let keys = |pairs: Vec<KvPair>| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(scan(&*snap, Cf::Raw, b"", b"", 10, false, false, 110, usize::MAX).unwrap()),
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    assert_eq!(checksum(&*snap, &[(vec![], vec![])], 110).unwrap().total_kvs, 2);
    assert_eq!(expired_keys(&*snap, Cf::Raw, b"", b"", 10, 110).unwrap().keys, vec![b"b".to_vec()]);
}

#[test]
fn scans_honour_limit_direction_and_key_only() {
    let engine = engine_with(&[(b"a", b"1", 0), (b"b", b"2", 0), (b"c", b"3", 0)], 0);
    let snap = engine.snapshot();
    let pairs = scan(&*snap, Cf::Raw, b"", b"c", 10, true, true, 0, usize::MAX).unwrap();
    assert_eq!(pairs, vec![(b"b".to_vec(), vec![]), (b"a".to_vec(), vec![])]);
    assert!(scan(&*snap, Cf::Raw, b"", b"", 0, false, false, 0, usize::MAX).unwrap().is_empty());
    assert_eq!(scan(&*snap, Cf::Raw, b"", b"", 2, false, false, 0, usize::MAX).unwrap().len(), 2);
    // Reading stops once past the byte bound, one pair over it.
    assert_eq!(scan(&*snap, Cf::Raw, b"", b"", 10, false, false, 0, 1).unwrap().len(), 1);
}

#[test]
fn compare_and_swap_compares_live_values() {
    let engine = engine_with(&[(b"k", b"old", 5)], 100);
    let snap = engine.snapshot();
    let mut batch = WriteBatch::new();
    let outcome =
        compare_and_swap(&*snap, Cf::Raw, b"k", Some(b"old"), b"new", 0, 101, &mut batch).unwrap();
    assert_eq!(outcome, CasOutcome { succeeded: true, previous: Some(b"old".to_vec()) });
    assert_eq!(batch.len(), 1);
    let mut batch = WriteBatch::new();
    let outcome =
        compare_and_swap(&*snap, Cf::Raw, b"k", Some(b"old"), b"new", 0, 200, &mut batch).unwrap();
    assert_eq!(
        outcome,
        CasOutcome { succeeded: false, previous: None },
        "expired counts as absent"
    );
    assert!(batch.is_empty());
    let outcome =
        compare_and_swap(&*snap, Cf::Raw, b"k", None, b"new", 0, 200, &mut batch).unwrap();
    assert!(outcome.succeeded);
}

#[test]
fn malformed_trailers_are_reported() {
    assert_eq!(decode_value(b""), None);
    assert_eq!(decode_value(b"\x07"), None);
    assert_eq!(decode_value(b"short\x01"), None);
    let engine = MemoryEngine::new();
    let mut batch = WriteBatch::new();
    batch.put(Cf::Raw, b"bad".to_vec(), b"\x09".to_vec());
    engine.write(batch).unwrap();
    assert!(matches!(
        get(&*engine.snapshot(), Cf::Raw, b"bad", 0),
        Err(RawError::Corrupted { .. })
    ));
}

proptest! {
    #[test]
    fn values_round_trip(value in proptest::collection::vec(any::<u8>(), 0..64), at in proptest::option::of(any::<u64>())) {
        let stored = encode_value(&value, at);
        prop_assert_eq!(decode_value(&stored), Some(RawValue { value: &value, expire_at_secs: at }));
    }
}

/// The stored format is part of the on-disk contract; these bytes must not change.
#[test]
fn stored_value_format_is_stable() {
    assert_eq!(encode_value(b"v", None), b"v\x00".to_vec());
    assert_eq!(encode_value(b"v", Some(0x0102)), b"v\x00\x00\x00\x00\x00\x00\x01\x02\x01".to_vec());
    assert_eq!(encode_value(b"", None), b"\x00".to_vec());
}

#[test]
fn checksum_is_order_independent_and_counts_live_pairs() {
    let a = engine_with(&[(b"a", b"1", 0), (b"b", b"22", 0)], 0);
    let b = engine_with(&[(b"b", b"22", 0), (b"a", b"1", 0), (b"c", b"x", 5)], 0);
    let sum_a = checksum(&*a.snapshot(), &[(vec![], vec![])], 10).unwrap();
    let sum_b = checksum(&*b.snapshot(), &[(vec![], vec![])], 10).unwrap();
    assert_eq!(sum_a, sum_b, "the expired pair does not count");
    assert_eq!((sum_a.total_kvs, sum_a.total_bytes), (2, 5));
    assert_ne!(sum_a.crc64_xor, 0);
    let only_a = checksum(&*a.snapshot(), &[(b"a".to_vec(), b"b".to_vec())], 10).unwrap();
    assert_eq!(only_a.total_kvs, 1);
}

#[test]
fn column_families_are_separate_namespaces() {
    let engine = MemoryEngine::new();
    let mut batch = WriteBatch::new();
    put(&mut batch, Cf::RawLock, b"k".to_vec(), b"in lock", 0, 0);
    put(&mut batch, Cf::RawWrite, b"k".to_vec(), b"in write", 0, 0);
    engine.write(batch).unwrap();
    let snap = engine.snapshot();
    assert_eq!(get(&*snap, Cf::Raw, b"k", 0).unwrap(), None);
    assert_eq!(get(&*snap, Cf::RawLock, b"k", 0).unwrap(), Some(b"in lock".to_vec()));
    assert_eq!(get(&*snap, Cf::RawWrite, b"k", 0).unwrap(), Some(b"in write".to_vec()));
    assert_eq!(keys_in_range(&*snap, Cf::RawLock, b"", b"", 10).unwrap().keys, vec![b"k".to_vec()]);
}
