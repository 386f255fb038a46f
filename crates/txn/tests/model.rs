//! Model-based test of MVCC: random transactions (committed or rolled back, short and long
//! values), reads at random timestamps, scans, and GC, checked against a `BTreeMap` of
//! committed versions. Proptest shrinks a failure to a minimal sequence and prints it.
//!
//! Commands run as the server runs them: with the lock index and the newest-record cache
//! handing hints to the reader, and both kept up around each write. After every write the
//! Latest CF must match the Write CF, and every cached record the Latest CF.

use proptest::prelude::*;
use scandium_storage::{Engine, MemoryEngine};
use scandium_txn::actions::cleanup;
use scandium_txn::actions::prewrite::{
    self, Mutation, MutationOp, PessimisticAction, PrewriteOutcome, TxnProps,
};
use scandium_txn::actions::{commit, gc, read};
use scandium_txn::mvcc::{latest, MvccReader, MvccTxn};
use scandium_txn::{LockIndex, NewestCache};
use scandium_types::TimeStamp;
use std::collections::BTreeMap;

/// Storage with the server's in-memory indexes.
struct Store {
    engine: MemoryEngine,
    locks: LockIndex,
    newest: NewestCache,
}

impl Store {
    /// Runs one write command on `keys` the way the server does, and checks the indexes.
    fn write(
        &self,
        keys: &[Vec<u8>],
        action: impl FnOnce(&MvccReader<'_>, &mut MvccTxn) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let hint = self.locks.hint_for_write(keys, &self.newest);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        let mut txn = MvccTxn::new();
        action(&reader, &mut txn)?;
        let lock_changes = txn.lock_changes().to_vec();
        let (batch, newest) = txn.seal(&reader).unwrap();
        self.locks.add_proposed(&lock_changes);
        self.newest.forget(&newest);
        self.engine.write(batch).unwrap();
        self.locks.apply(&lock_changes);
        self.newest.record(newest);
        let snapshot = self.engine.snapshot();
        latest::verify(&*snapshot).map_err(TestCaseError::fail)?;
        for key in (0u8..6).map(|k| vec![k]) {
            if let Some(cached) = self.newest.get(&key) {
                let stored = MvccReader::new(&*snapshot).newest_write(&key).unwrap();
                prop_assert_eq!(cached, stored, "cached newest record of {:?}", key);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Writes (None = delete) to keys, then commits or rolls back.
    Txn { writes: Vec<(u8, Option<(u8, bool)>)>, commit: bool },
    /// Reads a key at `back` timestamps before now.
    Read { key: u8, back: u64 },
    /// Scans everything at `back` timestamps before now.
    Scan { back: u64, reverse: bool },
    /// GC with the safe point `back` timestamps before now.
    Gc { back: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let value = proptest::option::of((any::<u8>(), any::<bool>()));
    prop_oneof![
        4 => (proptest::collection::vec((0u8..6, value), 1..4), any::<bool>())
            .prop_map(|(writes, commit)| Op::Txn { writes, commit }),
        3 => (0u8..6, 0u64..30).prop_map(|(key, back)| Op::Read { key, back }),
        1 => (0u64..30, any::<bool>()).prop_map(|(back, reverse)| Op::Scan { back, reverse }),
        1 => (0u64..30).prop_map(|back| Op::Gc { back }),
    ]
}

fn value_bytes(v: u8, long: bool) -> Vec<u8> {
    if long {
        vec![v; 300]
    } else {
        vec![v]
    }
}

/// A key's committed versions, oldest first: (commit_ts, value or None for a delete).
type Versions = Vec<(u64, Option<Vec<u8>>)>;

#[derive(Default)]
struct Model {
    versions: BTreeMap<Vec<u8>, Versions>,
    safe_point: u64,
}

impl Model {
    fn get(&self, key: &[u8], ts: u64) -> Option<Vec<u8>> {
        self.versions.get(key)?.iter().rev().find(|(c, _)| *c <= ts).and_then(|(_, v)| v.clone())
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Store {
        engine: MemoryEngine::new(),
        locks: LockIndex::default(),
        newest: NewestCache::new(1 << 20),
    };
    let engine = &store.engine;
    let mut model = Model::default();
    let mut now = 10u64;
    for op in ops {
        match op {
            Op::Txn { writes, commit: do_commit } => {
                let start = TimeStamp(now + 1);
                let commit_ts = TimeStamp(now + 2);
                now += 2;
                let mutations: Vec<Mutation> = writes
                    .iter()
                    .map(|(k, v)| match v {
                        Some((v, long)) => Mutation {
                            op: MutationOp::Put,
                            key: vec![*k],
                            value: value_bytes(*v, *long),
                        },
                        None => Mutation { op: MutationOp::Delete, key: vec![*k], value: vec![] },
                    })
                    .collect();
                let props = TxnProps {
                    start_ts: start,
                    primary: mutations[0].key.clone(),
                    lock_ttl: 100,
                    ..Default::default()
                };
                let keys: Vec<Vec<u8>> = mutations.iter().map(|m| m.key.clone()).collect();
                store.write(&keys, |reader, txn| {
                    for m in &mutations {
                        match prewrite::prewrite_key(
                            reader,
                            txn,
                            &props,
                            m,
                            PessimisticAction::SkipPessimisticCheck,
                        ) {
                            Ok(PrewriteOutcome::Lock(lock)) => txn.put_lock(&m.key, &lock),
                            other => {
                                prop_assert!(false, "sequential prewrite must succeed: {other:?}")
                            }
                        }
                    }
                    Ok(())
                })?;
                store.write(&keys, |reader, txn| {
                    for m in &mutations {
                        if do_commit {
                            commit::commit(reader, txn, &m.key, start, commit_ts).unwrap();
                        } else {
                            cleanup::rollback(reader, txn, &m.key, start).unwrap();
                        }
                    }
                    Ok(())
                })?;
                if do_commit {
                    // Later mutations of the same key in one transaction win.
                    let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                    for m in mutations {
                        last.insert(m.key, (m.op == MutationOp::Put).then_some(m.value));
                    }
                    for (k, v) in last {
                        model.versions.entry(k).or_default().push((commit_ts.0, v));
                    }
                }
            }
            Op::Read { key, back } => {
                let ts = now.saturating_sub(back).max(model.safe_point);
                let hint = store.locks.hint_for_read([&vec![key]], &store.newest);
                let snapshot = engine.snapshot();
                let reader = MvccReader::with_hint(&*snapshot, hint);
                let got = read::point_get(&reader, &[key], TimeStamp(ts)).unwrap();
                prop_assert_eq!(got, model.get(&[key], ts), "read of {} at {}", key, ts);
            }
            Op::Scan { back, reverse } => {
                let ts = now.saturating_sub(back).max(model.safe_point);
                let hint = store.locks.hint_range(b"", b"");
                let snapshot = engine.snapshot();
                let items = read::scan(
                    &MvccReader::with_hint(&*snapshot, hint),
                    b"",
                    b"",
                    100,
                    TimeStamp(ts),
                    false,
                    reverse,
                )
                .unwrap();
                let got: Vec<(Vec<u8>, Vec<u8>)> =
                    items.into_iter().map(|(k, v)| (k, v.unwrap())).collect();
                let mut expected: Vec<(Vec<u8>, Vec<u8>)> = model
                    .versions
                    .keys()
                    .filter_map(|k| model.get(k, ts).map(|v| (k.clone(), v)))
                    .collect();
                if reverse {
                    expected.reverse();
                }
                prop_assert_eq!(got, expected, "scan at {}", ts);
            }
            Op::Gc { back } => {
                let safe_point = now.saturating_sub(back).max(model.safe_point);
                model.safe_point = safe_point;
                let keys = MvccReader::new(&*engine.snapshot())
                    .keys_with_writes(b"", b"", false, usize::MAX)
                    .unwrap();
                store.write(&keys, |reader, txn| {
                    for key in &keys {
                        gc::gc_key(reader, txn, key, TimeStamp(safe_point)).unwrap();
                    }
                    Ok(())
                })?;
            }
        }
    }
    // Everything readable at or above the safe point is still as the model says.
    let snapshot = engine.snapshot();
    let reader = MvccReader::new(&*snapshot);
    for key in model.versions.keys() {
        for ts in model.safe_point..=now {
            prop_assert_eq!(
                read::point_get(&reader, key, TimeStamp(ts)).unwrap(),
                model.get(key, ts)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn mvcc_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
