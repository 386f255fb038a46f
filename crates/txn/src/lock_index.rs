//! [`LockIndex`]: which keys hold locks, and whose, in memory.
//!
//! Finding "every lock of transaction T in this Region" (lock resolution, GC, `ScanLock`)
//! by iterating the Lock column family costs time proportional to every lock ever written
//! and deleted there recently: the LSM keeps the tombstones until compaction drops them,
//! and an iterator walks over all of them. Live locks are few, so the node keeps them in a
//! map, updated around each command's proposal and rebuilt from the column family at
//! start.
//!
//! The index holds every lock that storage holds, and possibly a few more: a command adds
//! its new locks before it proposes them, and removes the locks it deleted only once that
//! deletion is applied. Both happen under the keys' latches, so for a latched key the index
//! is exact up to those extra entries; and a key it does not hold has no lock in any
//! snapshot taken afterwards, unless a command proposed that lock later. That is what a
//! [`LockHint`] relies on: taken before the snapshot, it lets readers skip the Lock CF for
//! the keys it proves unlocked (the argument is in `docs/architecture/txn.md`).
//!
//! An extra entry (a lock whose proposal was refused after it was added, say because the
//! Region's leadership changed) costs a storage lookup and nothing else: every user of the index reads the lock itself from
//! storage before acting on it. It stays until a command on that key removes a lock, or
//! the node restarts.

use crate::mvcc::{Lock, Newest};
use crate::NewestCache;
use scandium_storage::{Cf, EngineRef, StorageError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

/// Locked keys and the start timestamps of their owners.
#[derive(Default)]
pub struct LockIndex {
    locks: Mutex<BTreeMap<Vec<u8>, u64>>,
}

impl LockIndex {
    /// Builds the index from the Lock CF.
    pub fn load(engine: &EngineRef) -> Result<LockIndex, StorageError> {
        let mut locks = BTreeMap::new();
        for item in engine.snapshot().scan(Cf::Lock, b"", b"", false) {
            let (key, value) = item?;
            let lock = Lock::from_bytes(&value)
                .map_err(|e| StorageError::Corrupted { cf: Cf::Lock, reason: e.to_string() })?;
            locks.insert(key, lock.start_ts);
        }
        Ok(LockIndex { locks: Mutex::new(locks) })
    }

    /// Records the locks a command is about to propose (the `Some` entries of
    /// `MvccTxn::lock_changes`). Call under the keys' latches, before proposing.
    pub fn add_proposed(&self, changes: &[(Vec<u8>, Option<u64>)]) {
        let mut locks = None;
        for (key, owner) in changes {
            if let Some(start_ts) = owner {
                locks.get_or_insert_with(|| self.lock()).insert(key.clone(), *start_ts);
            }
        }
    }

    /// Records applied lock changes (see `MvccTxn::lock_changes`). Call under the keys'
    /// latches, once the changes are applied.
    pub fn apply(&self, changes: &[(Vec<u8>, Option<u64>)]) {
        if changes.is_empty() {
            return;
        }
        let mut locks = self.lock();
        for (key, owner) in changes {
            match owner {
                Some(start_ts) => locks.insert(key.clone(), *start_ts),
                None => locks.remove(key),
            };
        }
    }

    /// Replaces what the index holds for `[start, end)` (empty `end` = unbounded) with the
    /// locks `snapshot` holds there: a Region's data was replaced wholesale (a snapshot
    /// installed, a replica destroyed).
    pub fn reload_range(
        &self,
        snapshot: &dyn scandium_storage::Snapshot,
        start: &[u8],
        end: &[u8],
    ) -> Result<(), StorageError> {
        let mut fresh = Vec::new();
        for item in snapshot.scan(Cf::Lock, start, end, false) {
            let (key, value) = item?;
            let lock = Lock::from_bytes(&value)
                .map_err(|e| StorageError::Corrupted { cf: Cf::Lock, reason: e.to_string() })?;
            fresh.push((key, lock.start_ts));
        }
        if crate::inverted(start, end) {
            return Ok(());
        }
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_vec()) };
        let mut locks = self.lock();
        let stale: Vec<Vec<u8>> =
            locks.range((Bound::Included(start.to_vec()), upper)).map(|(k, _)| k.clone()).collect();
        for key in stale {
            locks.remove(&key);
        }
        locks.extend(fresh);
        Ok(())
    }

    /// Up to `limit` locked keys in `[start, end)` (empty `end` = unbounded) whose owner's
    /// start timestamp satisfies `keep`, in key order.
    pub fn keys(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Vec<Vec<u8>> {
        if crate::inverted(start, end) {
            return Vec::new();
        }
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_vec()) };
        self.lock()
            .range((Bound::Included(start.to_vec()), upper))
            .filter(|(_, ts)| keep(**ts))
            .take(limit)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// What the index proves about `keys` for a snapshot taken after this call. Take it
    /// under the keys' latches, or for a read after raising `max_ts`.
    pub fn hint_keys<'k>(&self, keys: impl IntoIterator<Item = &'k Vec<u8>>) -> LockHint {
        let locks = self.lock();
        let unlocked = keys.into_iter().filter(|k| !locks.contains_key(*k)).cloned().collect();
        LockHint { unlocked, ..LockHint::default() }
    }

    /// [`LockIndex::hint_keys`] for a write command holding the latches of `keys`, with
    /// their cached newest records: no other command can change them until it is done.
    pub fn hint_for_write(&self, keys: &[Vec<u8>], cache: &NewestCache) -> LockHint {
        let mut hint = self.hint_keys(keys);
        hint.newest = cached(keys, cache);
        hint
    }

    /// [`LockIndex::hint_keys`] for a read, with the cached newest records of the keys
    /// proved unlocked: a record missing from the cache then that the read should see
    /// would have had its lock in the index (see `docs/architecture/txn.md`). Take it after
    /// raising `max_ts` and checking the in-memory locks.
    pub fn hint_for_read<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k Vec<u8>>,
        cache: &NewestCache,
    ) -> LockHint {
        let mut hint = self.hint_keys(keys);
        hint.newest = cached(&hint.unlocked, cache);
        hint
    }

    /// What the index proves about the keys of `[start, end)` (empty `end` = unbounded),
    /// for a snapshot taken after this call (see [`LockIndex::hint_keys`]).
    pub fn hint_range(&self, start: &[u8], end: &[u8]) -> LockHint {
        let locked = self.keys(start, end, usize::MAX, |_| true).into_iter().collect();
        let range = RangeHint { start: start.to_vec(), end: end.to_vec(), locked };
        LockHint { range: Some(range), ..LockHint::default() }
    }

    /// Number of locked keys.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is locked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, u64>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a replica's [`LockIndex`] and [`NewestCache`] following its data when a change
/// reaches it by replication rather than through one of its own commands (another node
/// proposed it, or this node gave its proposal up), so that both are exact the moment
/// the replica leads. The server and the simulator run it on every applied write that
/// no command of theirs saw, in log order with their own commands.
pub struct IndexFollower {
    lock_index: std::sync::Arc<LockIndex>,
    newest: std::sync::Arc<NewestCache>,
}

impl IndexFollower {
    /// A follower updating these indexes.
    pub fn new(
        lock_index: std::sync::Arc<LockIndex>,
        newest: std::sync::Arc<NewestCache>,
    ) -> IndexFollower {
        IndexFollower { lock_index, newest }
    }

    /// Applies one replicated command's writes, given as (column family, key, value,
    /// delete). A lock that does not decode is left out of the index (it costs a storage
    /// lookup later, nothing else) and handed back for the caller to report.
    pub fn applied<'w>(
        &self,
        writes: impl IntoIterator<Item = (Cf, &'w [u8], &'w [u8], bool)>,
    ) -> Result<(), prost::DecodeError> {
        let mut locks = Vec::new();
        let mut newest = Vec::new();
        let mut undecodable = None;
        for (cf, key, value, delete) in writes {
            match cf {
                Cf::Lock if delete => locks.push((key.to_vec(), None)),
                Cf::Lock => match Lock::from_bytes(value) {
                    Ok(lock) => locks.push((key.to_vec(), Some(lock.start_ts))),
                    Err(error) => undecodable = Some(error),
                },
                Cf::Latest => newest.push(key),
                _ => {}
            }
        }
        self.lock_index.apply(&locks);
        self.newest.forget_keys(newest);
        undecodable.map_or(Ok(()), Err)
    }

    /// A Region's data in `[start, end)` was replaced wholesale (a snapshot installed, a
    /// replica destroyed): reloads the index there from `snapshot` and empties the cache.
    pub fn replaced(
        &self,
        snapshot: &dyn scandium_storage::Snapshot,
        start: &[u8],
        end: &[u8],
    ) -> Result<(), StorageError> {
        self.newest.clear();
        self.lock_index.reload_range(snapshot, start, end)
    }
}

/// The cached newest records of those of `keys` the cache holds.
fn cached<'k>(
    keys: impl IntoIterator<Item = &'k Vec<u8>>,
    cache: &NewestCache,
    // lookups only
) -> HashMap<Vec<u8>, Newest> {
    keys.into_iter().filter_map(|k| Some((k.clone(), cache.get(k)?))).collect()
}

/// Keys a [`LockIndex`] proved to hold no lock in a snapshot taken after it, so that an
/// [`MvccReader`](crate::mvcc::MvccReader) can skip their Lock CF lookups (most keys are
/// unlocked, and those lookups were a third of the point reads of a transaction), and the
/// newest records the [`NewestCache`] knows for keys it may trust them for.
#[derive(Clone, Debug, Default)]
pub struct LockHint {
    /// Keys without a lock.
    unlocked: HashSet<Vec<u8>>, // lookups only
    /// A range in which only the listed keys may hold locks.
    range: Option<RangeHint>,
    /// Newest records known from the [`NewestCache`], handed to the reader.
    pub(crate) newest: HashMap<Vec<u8>, Newest>, // lookups only
}

#[derive(Clone, Debug)]
struct RangeHint {
    start: Vec<u8>,
    /// Empty: unbounded.
    end: Vec<u8>,
    locked: BTreeSet<Vec<u8>>,
}

impl RangeHint {
    fn covers(&self, start: &[u8], end: &[u8]) -> bool {
        self.start.as_slice() <= start
            && (self.end.is_empty() || (!end.is_empty() && end <= self.end.as_slice()))
    }
}

impl LockHint {
    /// Whether `key` is proved to hold no lock.
    pub fn is_unlocked(&self, key: &[u8]) -> bool {
        self.unlocked.contains(key)
            || self.range.as_ref().is_some_and(|r| {
                r.start.as_slice() <= key
                    && (r.end.is_empty() || key < r.end.as_slice())
                    && !r.locked.contains(key)
            })
    }

    /// The only keys of `[start, end)` (empty `end` = unbounded) that may hold locks, in
    /// key order, if the hint covers that range.
    pub fn maybe_locked_in(&self, start: &[u8], end: &[u8]) -> Option<Vec<&[u8]>> {
        let range = self.range.as_ref().filter(|r| r.covers(start, end))?;
        if crate::inverted(start, end) {
            return Some(Vec::new());
        }
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
        let keys = range.locked.range::<[u8], _>((Bound::Included(start), upper));
        Some(keys.map(Vec::as_slice).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{MvccReader, MvccTxn};
    use scandium_storage::MemoryEngine;
    use std::sync::Arc;

    #[test]
    fn follows_applied_changes_and_rebuilds_from_storage() {
        let engine: EngineRef = Arc::new(MemoryEngine::new());
        let index = LockIndex::load(&engine).unwrap();
        let mut txn = MvccTxn::new();
        txn.put_lock(b"a", &Lock { start_ts: 5, ..Default::default() });
        txn.put_lock(b"b", &Lock { start_ts: 6, ..Default::default() });
        txn.put_lock(b"c", &Lock { start_ts: 5, ..Default::default() });
        txn.unlock(b"c");
        index.apply(txn.lock_changes());
        let snapshot = engine.snapshot();
        engine.write(txn.into_batch(&MvccReader::new(&*snapshot)).unwrap()).unwrap();
        assert_eq!(index.keys(b"", b"", 10, |ts| ts == 5), vec![b"a".to_vec()]);
        assert_eq!(index.keys(b"b", b"", 10, |_| true), vec![b"b".to_vec()]);
        let rebuilt = LockIndex::load(&engine).unwrap();
        assert_eq!(rebuilt.keys(b"", b"", 10, |_| true), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn a_follower_applies_replicated_locks_and_forgets_cached_records() {
        let index = Arc::new(LockIndex::default());
        let cache = Arc::new(NewestCache::new(1 << 20));
        index.apply(&[(b"a".to_vec(), Some(4))]);
        cache.record(vec![(b"k".to_vec(), None), (b"m".to_vec(), None)]);
        let follower = IndexFollower::new(index.clone(), cache.clone());
        let lock = Lock { start_ts: 7, ..Default::default() }.to_bytes();
        let writes = [
            (Cf::Lock, &b"a"[..], &b""[..], true),
            (Cf::Lock, &b"b"[..], &lock[..], false),
            (Cf::Lock, &b"c"[..], &b"\xff\xff"[..], false),
            (Cf::Latest, &b"k"[..], &b""[..], false),
            (Cf::Default, &b"m"[..], &b""[..], false),
        ];
        assert!(follower.applied(writes).is_err(), "the undecodable lock is reported");
        assert_eq!(index.keys(b"", b"", 10, |_| true), vec![b"b".to_vec()]);
        assert_eq!(cache.get(b"k"), None, "a replicated newest record is forgotten");
        assert_eq!(cache.get(b"m"), Some(None), "other column families leave the cache be");

        let engine: EngineRef = Arc::new(MemoryEngine::new());
        let mut txn = MvccTxn::new();
        txn.put_lock(b"d", &Lock { start_ts: 9, ..Default::default() });
        engine.write(txn.into_batch(&MvccReader::new(&*engine.snapshot())).unwrap()).unwrap();
        follower.replaced(&*engine.snapshot(), b"c", b"").unwrap();
        assert_eq!(index.keys(b"", b"", 10, |_| true), vec![b"b".to_vec(), b"d".to_vec()]);
        assert_eq!(cache.get(b"m"), None, "a replaced Region empties the cache");
    }

    #[test]
    fn new_locks_are_indexed_before_they_are_proposed_and_removals_after() {
        let index = LockIndex::default();
        let mut txn = MvccTxn::new();
        txn.put_lock(b"a", &Lock { start_ts: 5, ..Default::default() });
        index.apply(txn.lock_changes());
        let mut txn = MvccTxn::new();
        txn.unlock(b"a");
        txn.put_lock(b"b", &Lock { start_ts: 6, ..Default::default() });
        index.add_proposed(txn.lock_changes());
        assert_eq!(index.keys(b"", b"", 10, |_| true), vec![b"a".to_vec(), b"b".to_vec()]);
        index.apply(txn.lock_changes());
        assert_eq!(index.keys(b"", b"", 10, |_| true), vec![b"b".to_vec()]);
    }

    #[test]
    fn hints_prove_only_keys_the_index_does_not_hold() {
        let index = LockIndex::default();
        index.apply(&[(b"b".to_vec(), Some(5)), (b"d".to_vec(), Some(6))]);
        let keys = [b"a".to_vec(), b"b".to_vec()];
        let hint = index.hint_keys(&keys);
        assert!(hint.is_unlocked(b"a"));
        assert!(!hint.is_unlocked(b"b"));
        assert!(!hint.is_unlocked(b"c"), "a key the hint was not asked about");
        assert_eq!(hint.maybe_locked_in(b"a", b"z"), None, "no range was hinted");

        let hint = index.hint_range(b"b", b"e");
        assert!(hint.is_unlocked(b"c"));
        assert!(!hint.is_unlocked(b"d"));
        assert!(!hint.is_unlocked(b"e") && !hint.is_unlocked(b"a"), "outside the range");
        assert_eq!(hint.maybe_locked_in(b"c", b"e"), Some(vec![&b"d"[..]]));
        assert_eq!(hint.maybe_locked_in(b"b", b"d"), Some(vec![&b"b"[..]]));
        assert_eq!(hint.maybe_locked_in(b"a", b"e"), None, "starts before the range");
        assert_eq!(hint.maybe_locked_in(b"b", b""), None, "unbounded past the range");
        let all = index.hint_range(b"", b"");
        assert_eq!(all.maybe_locked_in(b"c", b""), Some(vec![&b"d"[..]]));
    }

    #[test]
    fn a_reader_with_a_hint_skips_the_lock_cf_only_for_proved_keys() {
        let engine: EngineRef = Arc::new(MemoryEngine::new());
        let index = LockIndex::default();
        let mut txn = MvccTxn::new();
        for (key, ts) in [(&b"a"[..], 5), (b"c", 6)] {
            txn.put_lock(key, &Lock { start_ts: ts, ..Default::default() });
        }
        index.add_proposed(txn.lock_changes());
        let snapshot = engine.snapshot();
        engine.write(txn.into_batch(&MvccReader::new(&*snapshot)).unwrap()).unwrap();
        let keys = [b"a".to_vec(), b"b".to_vec()];
        let snapshot = engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, index.hint_keys(&keys));
        assert_eq!(reader.load_lock(b"a").unwrap().unwrap().start_ts, 5);
        assert_eq!(reader.load_lock(b"b").unwrap(), None);
        assert_eq!(reader.load_lock(b"c").unwrap().unwrap().start_ts, 6, "not in the hint");
        let reader = MvccReader::with_hint(&*snapshot, index.hint_range(b"b", b""));
        let locks = reader.scan_locks(b"b", b"", 0, |_| true).unwrap();
        assert_eq!(locks.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), [b"c"]);
        let locks = reader.scan_locks(b"", b"", 0, |_| true).unwrap();
        assert_eq!(locks.len(), 2, "a range the hint does not cover is read from storage");
    }
}
