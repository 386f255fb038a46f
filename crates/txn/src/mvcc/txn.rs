//! [`MvccTxn`]: the changes one command makes, gathered into a write batch.

use crate::error::Result;
use crate::mvcc::latest::KeyWrites;
use crate::mvcc::{Lock, MvccReader, Newest, Write};
use scandium_storage::{Cf, WriteBatch};
use scandium_types::mvcc::versioned_key;
use scandium_types::TimeStamp;
use std::collections::BTreeMap;

/// Keys whose newest record a sealed command changes, each with its new newest record.
pub type NewestChanges = Vec<(Vec<u8>, Newest)>;

/// Changes to the transactional column families, applied atomically as one Raft command.
#[derive(Default)]
pub struct MvccTxn {
    batch: WriteBatch,
    /// Keys whose locks this command removes (their waiters can retry).
    released: Vec<Vec<u8>>,
    /// Lock changes in order: the owner's start timestamp, or `None` for a removal.
    lock_changes: Vec<(Vec<u8>, Option<u64>)>,
    /// Write CF changes by user key, from which sealing derives the Latest CF's.
    writes: BTreeMap<Vec<u8>, KeyWrites>,
}

impl MvccTxn {
    /// No changes yet.
    pub fn new() -> MvccTxn {
        MvccTxn::default()
    }

    /// Writes (or replaces) the lock on `key`.
    pub fn put_lock(&mut self, key: &[u8], lock: &Lock) {
        self.batch.put(Cf::Lock, key.to_vec(), lock.to_bytes());
        self.lock_changes.push((key.to_vec(), Some(lock.start_ts)));
    }

    /// Removes the lock on `key`.
    pub fn unlock(&mut self, key: &[u8]) {
        self.batch.delete(Cf::Lock, key.to_vec());
        self.released.push(key.to_vec());
        self.lock_changes.push((key.to_vec(), None));
    }

    /// Writes a Write record at `commit_ts`.
    pub fn put_write(&mut self, key: &[u8], commit_ts: TimeStamp, write: &Write) {
        self.batch.put(Cf::Write, versioned_key(key, commit_ts), write.to_bytes());
        self.writes.entry(key.to_vec()).or_default().put(commit_ts, write);
    }

    /// Removes the Write record at `commit_ts`.
    pub fn delete_write(&mut self, key: &[u8], commit_ts: TimeStamp) {
        self.batch.delete(Cf::Write, versioned_key(key, commit_ts));
        self.writes.entry(key.to_vec()).or_default().delete(commit_ts);
    }

    /// Stores a long value written by transaction `start_ts`.
    pub fn put_value(&mut self, key: &[u8], start_ts: TimeStamp, value: Vec<u8>) {
        self.batch.put(Cf::Default, versioned_key(key, start_ts), value);
    }

    /// Removes the long value of transaction `start_ts`.
    pub fn delete_value(&mut self, key: &[u8], start_ts: TimeStamp) {
        self.batch.delete(Cf::Default, versioned_key(key, start_ts));
    }

    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Keys whose locks were removed.
    pub fn released_keys(&self) -> &[Vec<u8>] {
        &self.released
    }

    /// Lock changes in order: `(key, Some(start_ts))` for a lock written, `(key, None)` for
    /// one removed.
    pub fn lock_changes(&self) -> &[(Vec<u8>, Option<u64>)] {
        &self.lock_changes
    }

    /// The changes, for proposal, with the Latest CF changes they imply. `reader` must
    /// read the snapshot the changes were computed from, and the keys' latches must still
    /// be held, so that the index is derived from the records the batch will change.
    pub fn into_batch(self, reader: &MvccReader<'_>) -> Result<WriteBatch> {
        Ok(self.seal(reader)?.0)
    }

    /// [`MvccTxn::into_batch`], also returning each key whose newest record the batch
    /// changes, with that record (for the [`NewestCache`](crate::NewestCache)).
    pub fn seal(self, reader: &MvccReader<'_>) -> Result<(WriteBatch, NewestChanges)> {
        let mut batch = self.batch;
        let mut newest = Vec::new();
        for (key, writes) in self.writes {
            if let Some(record) = writes.seal(reader, &key, &mut batch)? {
                newest.push((key, record));
            }
        }
        Ok((batch, newest))
    }
}
