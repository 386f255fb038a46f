//! [`MvccReader`]: reads of locks, versions and values from a snapshot.

use crate::error::{Result, TxnError};
use crate::lock_index::LockHint;
use crate::mvcc::{latest, Lock, Write, WriteType};
use scandium_storage::{Cf, Snapshot};
use scandium_types::mvcc::{split_versioned_key, versioned_key, versions_range};
use scandium_types::TimeStamp;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// What a transaction left on a key, found in the Write CF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnCommitRecord {
    /// The transaction committed the key at this timestamp.
    Committed(TimeStamp, Write),
    /// The transaction was rolled back on the key.
    RolledBack,
    /// No record: the transaction neither committed nor was rolled back here.
    None,
}

/// Keys whose newest record one reader remembers, at most (a scan reads many keys once
/// each; a write command reads a few keys several times).
const NEWEST_CACHE_KEYS: usize = 1024;

/// A key's newest record as the Latest CF holds it: commit timestamp and record (`None`:
/// the key has no record).
pub type Newest = Option<(TimeStamp, Write)>;

/// Reads of the transactional column families at a snapshot.
pub struct MvccReader<'a> {
    snapshot: &'a dyn Snapshot,
    /// Newest records already looked up. The snapshot never changes, and a write command
    /// asks for a key's newest record several times: its checks, the exact-version checks
    /// (`write_at`), and sealing its changes into the Latest CF.
    newest: Mutex<HashMap<Vec<u8>, Newest>>, // lookups only
    /// Keys whose Lock CF lookup can be skipped.
    hint: LockHint,
}

impl<'a> MvccReader<'a> {
    /// Reads from `snapshot`.
    pub fn new(snapshot: &'a dyn Snapshot) -> MvccReader<'a> {
        MvccReader::with_hint(snapshot, LockHint::default())
    }

    /// Reads from `snapshot`, trusting `hint` (taken before the snapshot) that its keys
    /// hold no locks.
    pub fn with_hint(snapshot: &'a dyn Snapshot, mut hint: LockHint) -> MvccReader<'a> {
        let newest = Mutex::new(std::mem::take(&mut hint.newest));
        MvccReader { snapshot, newest, hint }
    }

    // The cache, for lookups only.
    fn newest_cache(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Newest>> {
        self.newest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock on `key`, if any.
    pub fn load_lock(&self, key: &[u8]) -> Result<Option<Lock>> {
        if self.hint.is_unlocked(key) {
            return Ok(None);
        }
        match self.snapshot.get(Cf::Lock, key)? {
            Some(bytes) => Ok(Some(Lock::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The newest Write record of `key` (of any type), from the [`Cf::Latest`] index: one
    /// point lookup, which the engine answers from its filters for keys it does not hold.
    pub fn newest_write(&self, key: &[u8]) -> Result<Newest> {
        if let Some(newest) = self.newest_cache().get(key) {
            return Ok(newest.clone());
        }
        let newest = match self.snapshot.get(Cf::Latest, key)? {
            Some(bytes) => Some(latest::decode(&bytes)?),
            None => None,
        };
        let mut cache = self.newest_cache();
        if cache.len() < NEWEST_CACHE_KEYS {
            cache.insert(key.to_vec(), newest.clone());
        }
        Ok(newest)
    }

    /// Records of `key` with commit timestamp at most `ts`, newest first.
    ///
    /// The newest record comes from the index; the Write CF is only searched when the
    /// caller asks for more (most stop at the first), or when the newest record is above
    /// `ts`. A key the index does not hold has no records at all.
    pub fn writes_at_or_below(
        &self,
        key: &[u8],
        ts: TimeStamp,
    ) -> Box<dyn Iterator<Item = Result<(TimeStamp, Write)>> + '_> {
        let newest = match self.newest_write(key) {
            Ok(newest) => newest,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        match newest {
            None => Box::new(std::iter::empty()),
            Some((commit_ts, write)) if commit_ts <= ts => {
                let key = key.to_vec();
                let mut older = None;
                let rest = std::iter::from_fn(move || {
                    if commit_ts == TimeStamp::ZERO {
                        return None;
                    }
                    older
                        .get_or_insert_with(|| self.scan_writes(&key, TimeStamp(commit_ts.0 - 1)))
                        .next()
                });
                Box::new(std::iter::once(Ok((commit_ts, write))).chain(rest))
            }
            Some(_) => Box::new(self.scan_writes(key, ts)),
        }
    }

    /// [`MvccReader::writes_at_or_below`] from the Write CF alone, without the index.
    pub(crate) fn scan_writes(
        &self,
        key: &[u8],
        ts: TimeStamp,
    ) -> impl Iterator<Item = Result<(TimeStamp, Write)>> + '_ {
        let (_, end) = versions_range(key);
        let start = versioned_key(key, ts);
        self.snapshot.scan(Cf::Write, &start, &end, false).map(|item| {
            let (k, v) = item?;
            let (_, commit_ts) = split_versioned_key(&k)
                .ok_or_else(|| TxnError::Corrupted(format!("write key {k:?}")))?;
            Ok((commit_ts, Write::from_bytes(&v)?))
        })
    }

    /// The record of `key` at exactly `commit_ts`. The newest record usually answers (a
    /// commit timestamp above it has no record yet); otherwise a point lookup, which the
    /// engine answers from its filters.
    pub fn write_at(&self, key: &[u8], commit_ts: TimeStamp) -> Result<Option<Write>> {
        match self.newest_write(key)? {
            None => return Ok(None),
            Some((ts, _)) if ts < commit_ts => return Ok(None),
            Some((ts, write)) if ts == commit_ts => return Ok(Some(write)),
            Some(_) => {}
        }
        match self.snapshot.get(Cf::Write, &versioned_key(key, commit_ts))? {
            Some(bytes) => Ok(Some(Write::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The newest record of `key` with commit timestamp at most `ts`.
    pub fn seek_write(&self, key: &[u8], ts: TimeStamp) -> Result<Option<(TimeStamp, Write)>> {
        self.writes_at_or_below(key, ts).next().transpose()
    }

    /// The newest Put or Delete of `key` committed at or below `ts` (Lock and Rollback
    /// records are looked past).
    pub fn get_write(&self, key: &[u8], ts: TimeStamp) -> Result<Option<(TimeStamp, Write)>> {
        for item in self.writes_at_or_below(key, ts) {
            let (commit_ts, write) = item?;
            match write.kind() {
                WriteType::Put | WriteType::Delete => return Ok(Some((commit_ts, write))),
                WriteType::Lock | WriteType::Rollback => {}
            }
        }
        Ok(None)
    }

    /// The value of `key` visible at `ts`, ignoring locks.
    pub fn get_value(&self, key: &[u8], ts: TimeStamp) -> Result<Option<Vec<u8>>> {
        match self.get_write(key, ts)? {
            Some((_, write)) if write.kind() == WriteType::Put => {
                Ok(Some(self.load_data(key, write)?))
            }
            _ => Ok(None),
        }
    }

    /// The value a Put record stands for: inline, or in the Default CF.
    pub fn load_data(&self, key: &[u8], write: Write) -> Result<Vec<u8>> {
        if let Some(value) = write.short_value {
            return Ok(value);
        }
        let start_ts = TimeStamp(write.start_ts);
        self.snapshot.get(Cf::Default, &versioned_key(key, start_ts))?.ok_or_else(|| {
            TxnError::Corrupted(format!("value of {key:?} at {start_ts} is missing"))
        })
    }

    /// What transaction `start_ts` left on `key`: a commit, a rollback, or nothing.
    pub fn get_txn_commit_record(
        &self,
        key: &[u8],
        start_ts: TimeStamp,
    ) -> Result<TxnCommitRecord> {
        for item in self.writes_at_or_below(key, TimeStamp::MAX) {
            let (commit_ts, write) = item?;
            if commit_ts < start_ts {
                break;
            }
            if write.start_ts == start_ts.0 {
                return Ok(match write.kind() {
                    WriteType::Rollback => TxnCommitRecord::RolledBack,
                    _ => TxnCommitRecord::Committed(commit_ts, write),
                });
            }
            if commit_ts == start_ts && write.has_overlapped_rollback {
                return Ok(TxnCommitRecord::RolledBack);
            }
        }
        Ok(TxnCommitRecord::None)
    }

    /// Locks in `[start, end)` (empty `end` = unbounded), in key order, at most `limit`
    /// (0 = no limit), that satisfy `keep`.
    pub fn scan_locks(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keep: impl Fn(&Lock) -> bool,
    ) -> Result<Vec<(Vec<u8>, Lock)>> {
        let mut locks = Vec::new();
        if let Some(keys) = self.hint.maybe_locked_in(start, end) {
            for key in keys {
                let Some(bytes) = self.snapshot.get(Cf::Lock, key)? else { continue };
                let lock = Lock::from_bytes(&bytes)?;
                if keep(&lock) {
                    locks.push((key.to_vec(), lock));
                    if limit != 0 && locks.len() >= limit {
                        break;
                    }
                }
            }
            return Ok(locks);
        }
        for item in self.snapshot.scan(Cf::Lock, start, end, false) {
            let (key, bytes) = item?;
            let lock = Lock::from_bytes(&bytes)?;
            if keep(&lock) {
                locks.push((key, lock));
                if limit != 0 && locks.len() >= limit {
                    break;
                }
            }
        }
        Ok(locks)
    }

    /// Distinct user keys having any Write record in `[start, end)` (empty `end` =
    /// unbounded), ascending or descending, at most `limit`: one index entry per key,
    /// however many versions it has.
    pub fn keys_with_writes(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        self.snapshot
            .scan(Cf::Latest, start, end, reverse)
            .take(limit)
            .map(|item| Ok(item?.0))
            .collect()
    }
}
