//! [`ConcurrencyManager`]: the node-wide state that keeps async commit and one-phase commit
//! correct.
//!
//! Those protocols choose a commit timestamp on the storage node instead of asking the
//! timestamp oracle: `max(start_ts, for_update_ts, max_ts) + 1`, where `max_ts` is the
//! highest timestamp any reader has used here. That is only safe if a reader cannot slip
//! between "the prewrite read `max_ts`" and "the lock became visible". So the prewrite puts
//! its locks into an in-memory table and reads `max_ts` under one mutex, and a reader first
//! raises `max_ts` and then checks the table under the same mutex: either the reader's
//! timestamp is counted in the commit timestamp, or the reader sees the lock.

use crate::error::{Result, TxnError};
use crate::mvcc::{Lock, LockType};
use scandium_types::TimeStamp;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How far past this node's wall clock a timestamp from a client may be (see
/// [`ConcurrencyManager::update_max_ts_from_client`]).
pub const MAX_TS_DRIFT_MS: u64 = 60 * 60_000;

/// Highest read timestamp and the in-memory locks of in-flight async-commit prewrites.
#[derive(Default)]
pub struct ConcurrencyManager {
    max_ts: AtomicU64,
    memory_locks: Mutex<BTreeMap<Vec<u8>, Lock>>,
}

/// Keeps a prewrite's in-memory locks until the locks are on disk; dropping it removes them
/// (each only while it is still this prewrite's: the next transaction's lock on the key,
/// published once the key's latch was free, stays).
pub struct MemoryLockGuard {
    manager: Arc<ConcurrencyManager>,
    keys: Vec<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for MemoryLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLockGuard").field("keys", &self.keys.len()).finish()
    }
}

impl Drop for MemoryLockGuard {
    fn drop(&mut self) {
        let mut table = self.manager.table();
        for (key, start_ts) in &self.keys {
            if table.get(key).is_some_and(|lock| lock.start_ts == *start_ts) {
                table.remove(key);
            }
        }
    }
}

/// Whether `lock` hides `key`'s value from a reader at `ts`: the lock's transaction could
/// still commit at or below `ts`.
pub fn lock_blocks_read(lock: &Lock, ts: TimeStamp) -> bool {
    let guards_only = matches!(lock.kind(), LockType::Lock | LockType::Pessimistic);
    !guards_only && lock.start_ts <= ts.0 && lock.min_commit_ts <= ts.0
}

impl ConcurrencyManager {
    /// A manager whose `max_ts` starts at `initial` (a fresh timestamp at node start, so
    /// reads before a restart are covered).
    pub fn new(initial: TimeStamp) -> ConcurrencyManager {
        ConcurrencyManager { max_ts: AtomicU64::new(initial.0), memory_locks: Mutex::default() }
    }

    /// The highest timestamp seen.
    pub fn max_ts(&self) -> TimeStamp {
        TimeStamp(self.max_ts.load(Ordering::SeqCst))
    }

    /// Records a timestamp a reader (or a status check) used. `TimeStamp::MAX` means
    /// "latest" and is not a real timestamp, so it is not recorded.
    pub fn update_max_ts(&self, ts: TimeStamp) {
        if ts != TimeStamp::MAX {
            self.max_ts.fetch_max(ts.0, Ordering::SeqCst);
        }
    }

    /// Records a timestamp a client sent (a read's, a status check's caller's, a lock's
    /// `for_update_ts`), refusing one far past this node's clock: taken, one near 2^64
    /// would put every later async-commit or 1PC transaction here above any real read
    /// timestamp, for good. The allowance ([`MAX_TS_DRIFT_MS`]) is wide, as the clock
    /// compared with is this node's, not the timestamp oracle's.
    pub fn update_max_ts_from_client(&self, ts: TimeStamp) -> Result<()> {
        if ts != TimeStamp::MAX {
            let wall_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if ts.physical() > wall_ms.saturating_add(MAX_TS_DRIFT_MS) {
                return Err(TxnError::Invalid(format!(
                    "timestamp {} is more than {} minutes past this node's clock",
                    ts.0,
                    MAX_TS_DRIFT_MS / 60_000
                )));
            }
        }
        self.update_max_ts(ts);
        Ok(())
    }

    /// Raises `max_ts` to `ts` and fails if an in-flight prewrite's lock hides `key` at `ts`.
    pub fn read_key_check(&self, key: &[u8], ts: TimeStamp) -> Result<()> {
        self.update_max_ts_from_client(ts)?;
        match self.table().get(key) {
            Some(lock) if lock_blocks_read(lock, ts) => {
                Err(TxnError::KeyIsLocked { key: key.to_vec(), lock: Box::new(lock.clone()) })
            }
            _ => Ok(()),
        }
    }

    /// Like [`ConcurrencyManager::read_key_check`] for every key in `[start, end)` (empty
    /// `end` = unbounded).
    pub fn read_range_check(&self, start: &[u8], end: &[u8], ts: TimeStamp) -> Result<()> {
        self.update_max_ts_from_client(ts)?;
        if crate::inverted(start, end) {
            return Ok(());
        }
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_vec()) };
        let table = self.table();
        let blocking = table
            .range((Bound::Included(start.to_vec()), upper))
            .find(|(_, lock)| lock_blocks_read(lock, ts));
        match blocking {
            Some((key, lock)) => {
                Err(TxnError::KeyIsLocked { key: key.clone(), lock: Box::new(lock.clone()) })
            }
            None => Ok(()),
        }
    }

    /// Publishes in-memory locks for `locks` and, under the same mutex, lets `finish` read
    /// `max_ts` and complete them (set `min_commit_ts`). Keep the guard until the locks are
    /// applied to storage.
    pub fn lock_for_commit_ts(
        self: &Arc<Self>,
        locks: &mut [(Vec<u8>, Lock)],
        finish: impl FnOnce(TimeStamp, &mut [(Vec<u8>, Lock)]),
    ) -> MemoryLockGuard {
        let mut table = self.table();
        finish(self.max_ts(), locks);
        for (key, lock) in locks.iter() {
            table.insert(key.clone(), lock.clone());
        }
        MemoryLockGuard {
            manager: self.clone(),
            keys: locks.iter().map(|(k, lock)| (k.clone(), lock.start_ts)).collect(),
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Lock>> {
        self.memory_locks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_lock(start_ts: u64, min_commit_ts: u64) -> Lock {
        Lock { lock_type: LockType::Put as i32, start_ts, min_commit_ts, ..Default::default() }
    }

    #[test]
    fn readers_raise_max_ts_and_see_in_flight_locks() {
        let manager = Arc::new(ConcurrencyManager::new(TimeStamp(5)));
        manager.read_key_check(b"a", TimeStamp(40)).unwrap();
        assert_eq!(manager.max_ts(), TimeStamp(40));
        manager.update_max_ts(TimeStamp::MAX);
        assert_eq!(manager.max_ts(), TimeStamp(40), "MAX is not a timestamp");

        let mut locks = vec![(b"k".to_vec(), put_lock(30, 0))];
        let guard = manager.lock_for_commit_ts(&mut locks, |max_ts, locks| {
            for (_, lock) in locks.iter_mut() {
                lock.min_commit_ts = max_ts.0 + 1;
            }
        });
        assert_eq!(locks[0].1.min_commit_ts, 41);
        assert!(manager.read_key_check(b"k", TimeStamp(45)).is_err(), "could commit at 41 <= 45");
        assert!(
            manager.read_key_check(b"k", TimeStamp(35)).is_ok(),
            "cannot commit at or below 35"
        );
        assert!(manager.read_range_check(b"a", b"z", TimeStamp(50)).is_err());
        drop(guard);
        assert!(manager.read_key_check(b"k", TimeStamp(60)).is_ok(), "released with the guard");
    }

    /// A timestamp far past the clock is refused, and `max_ts` stays where it was.
    #[test]
    fn a_timestamp_far_past_the_clock_is_refused() {
        let manager = Arc::new(ConcurrencyManager::new(TimeStamp(5)));
        let absurd = TimeStamp(u64::MAX - 1);
        assert!(manager.read_key_check(b"k", absurd).is_err());
        assert!(manager.update_max_ts_from_client(absurd).is_err());
        assert_eq!(manager.max_ts(), TimeStamp(5));
        let wall_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64;
        let now = TimeStamp::compose(wall_ms, 0);
        manager.read_key_check(b"k", now).unwrap();
        assert_eq!(manager.max_ts(), now);
    }

    /// A guard dropped after the next transaction published its own lock on the key
    /// leaves that lock: removed, a reader would miss a write committing below its
    /// timestamp.
    #[test]
    fn a_guard_removes_only_its_own_locks() {
        let manager = Arc::new(ConcurrencyManager::new(TimeStamp(5)));
        let mut first = vec![(b"k".to_vec(), put_lock(10, 11))];
        let old = manager.lock_for_commit_ts(&mut first, |_, _| {});
        let mut second = vec![(b"k".to_vec(), put_lock(20, 21))];
        let _new = manager.lock_for_commit_ts(&mut second, |_, _| {});
        drop(old);
        assert!(manager.read_key_check(b"k", TimeStamp(30)).is_err(), "the second lock stays");
    }

    #[test]
    fn guard_only_locks_never_block() {
        let mut lock = put_lock(10, 0);
        assert!(lock_blocks_read(&lock, TimeStamp(10)));
        assert!(!lock_blocks_read(&lock, TimeStamp(9)));
        lock.lock_type = LockType::Pessimistic as i32;
        assert!(!lock_blocks_read(&lock, TimeStamp(100)));
        lock.lock_type = LockType::Lock as i32;
        assert!(!lock_blocks_read(&lock, TimeStamp(100)));
    }
}
