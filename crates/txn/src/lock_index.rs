//! [`LockIndex`]: which keys hold locks, and whose, in memory.
//!
//! Finding "every lock of transaction T in this Region" (lock resolution, GC, `ScanLock`)
//! by iterating the Lock column family costs time proportional to every lock ever written
//! and deleted there recently: the LSM keeps the tombstones until compaction drops them,
//! and an iterator walks over all of them. Live locks are few, so the node keeps them in a
//! map, updated after each command's changes are applied and rebuilt from the column
//! family at start.
//!
//! The index only ever narrows the search: callers read the lock itself from storage
//! (under the key's latch) before acting on it, and a lock applied a moment before the
//! index learns of it is found by the next resolution, as any lock written later would be.

use crate::mvcc::Lock;
use scandium_storage::{Cf, EngineRef, StorageError};
use std::collections::BTreeMap;
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

    /// Records applied lock changes (see `MvccTxn::lock_changes`).
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

    /// Up to `limit` locked keys in `[start, end)` (empty `end` = unbounded) whose owner's
    /// start timestamp satisfies `keep`, in key order.
    pub fn keys(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Vec<Vec<u8>> {
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_vec()) };
        self.lock()
            .range((Bound::Included(start.to_vec()), upper))
            .filter(|(_, ts)| keep(**ts))
            .take(limit)
            .map(|(key, _)| key.clone())
            .collect()
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
}
