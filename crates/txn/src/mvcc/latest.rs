//! The Latest CF: each transactional key's newest Write record, under the user key.
//!
//! Nearly every transactional command asks one question of the Write CF: "what is this
//! key's newest record?" (a read at a recent timestamp, a prewrite's conflict check, a
//! pessimistic lock). In the Write CF that is a seek, and fjall, which has no prefix
//! filters, positions an iterator in every table and memtable to answer it: it was a third
//! of the server's CPU per commit. Here it is a point lookup that the tables' filters
//! answer.
//!
//! The index is derived data with one invariant: **it holds an entry for a key exactly
//! when the Write CF holds a record of that key, and the entry is the record with the
//! highest commit timestamp** (a Rollback or Lock record included). [`MvccTxn`] keeps it:
//! every command's Write CF changes pass through it, and when the command is sealed into
//! its write batch the index changes are computed against the command's snapshot (under
//! the keys' latches, so nothing else changed them) and added to the same batch, so the
//! Raft entry that carries the records carries the index too.
//!
//! [`MvccTxn`]: crate::mvcc::MvccTxn

use crate::error::{Result, TxnError};
use crate::mvcc::{MvccReader, Newest, Write};
use scandium_storage::{Cf, Engine, Snapshot, StorageError, WriteBatch};
use scandium_types::mvcc::split_versioned_key;
use scandium_types::TimeStamp;
use std::collections::BTreeMap;

/// Index records written per batch while rebuilding.
const REBUILD_BATCH: usize = 1024;

/// Encodes an index value: the commit timestamp (big-endian) and the record.
pub(crate) fn encode(commit_ts: TimeStamp, write: &Write) -> Vec<u8> {
    let mut bytes = commit_ts.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(&write.to_bytes());
    bytes
}

/// Decodes an index value.
pub(crate) fn decode(bytes: &[u8]) -> Result<(TimeStamp, Write)> {
    let Some((ts, write)) = bytes.split_first_chunk::<8>() else {
        return Err(TxnError::Corrupted(format!("latest-write record {bytes:?}")));
    };
    Ok((TimeStamp(u64::from_be_bytes(*ts)), Write::from_bytes(write)?))
}

/// One command's changes to the Write CF records of one key: by commit timestamp, the
/// record written (`Some`) or deleted (`None`), the last change winning as in the batch.
#[derive(Default, Debug)]
pub(crate) struct KeyWrites {
    changes: BTreeMap<TimeStamp, Option<Write>>,
}

impl KeyWrites {
    pub(crate) fn put(&mut self, commit_ts: TimeStamp, write: &Write) {
        self.changes.insert(commit_ts, Some(write.clone()));
    }

    pub(crate) fn delete(&mut self, commit_ts: TimeStamp) {
        self.changes.insert(commit_ts, None);
    }

    /// Adds to `batch` the index change these record changes imply for `key`, given the
    /// records in `reader`'s snapshot, and returns the key's newest record after it (`None`
    /// if the index entry is unchanged).
    pub(crate) fn seal(
        &self,
        reader: &MvccReader<'_>,
        key: &[u8],
        batch: &mut WriteBatch,
    ) -> Result<Option<Newest>> {
        let current = reader.newest_write(key)?;
        let newest_put =
            self.changes.iter().rev().find_map(|(ts, w)| w.as_ref().map(|w| (*ts, w.clone())));
        let newest = match current {
            // A first record: the newest written, if any.
            None if newest_put.is_none() => return Ok(None),
            None => newest_put,
            Some((ts, _)) => match self.changes.get(&ts) {
                // Untouched: it stays the newest unless a newer record was written.
                None => match newest_put {
                    Some(put) if put.0 > ts => Some(put),
                    _ => return Ok(None),
                },
                // Rewritten: the rewrite, or a newer record, is the newest.
                Some(Some(_)) => newest_put,
                // Deleted: whichever is higher of what this command wrote and what it
                // left of the older records.
                Some(None) => {
                    let survivor = reader
                        .scan_writes(key, ts)
                        .find(|item| !matches!(item, Ok((ts, _)) if self.changes.contains_key(ts)))
                        .transpose()?;
                    match (survivor, newest_put) {
                        (Some(old), Some(put)) => Some(if put.0 > old.0 { put } else { old }),
                        (old, put) => old.or(put),
                    }
                }
            },
        };
        match &newest {
            Some((ts, write)) => batch.put(Cf::Latest, key.to_vec(), encode(*ts, write)),
            None => batch.delete(Cf::Latest, key.to_vec()),
        }
        Ok(Some(newest))
    }
}

/// Rebuilds the whole index from the Write CF, writing straight to `engine` (not through
/// Raft). For a data directory written before the index existed; the caller runs it before
/// the node serves, records that it is done, and syncs.
pub fn rebuild(engine: &dyn Engine) -> std::result::Result<u64, StorageError> {
    let snapshot = engine.snapshot();
    let mut batch = WriteBatch::new();
    for item in snapshot.scan(Cf::Latest, b"", b"", false) {
        batch.delete(Cf::Latest, item?.0);
        if batch.len() >= REBUILD_BATCH {
            engine.write(std::mem::take(&mut batch))?;
        }
    }
    let mut keys = 0;
    let mut last: Option<Vec<u8>> = None;
    for item in snapshot.scan(Cf::Write, b"", b"", false) {
        let (versioned, value) = item?;
        let corrupted = |reason: String| StorageError::Corrupted { cf: Cf::Write, reason };
        let (key, commit_ts) = split_versioned_key(&versioned)
            .ok_or_else(|| corrupted(format!("write key {versioned:?}")))?;
        if last.as_ref() == Some(&key) {
            continue;
        }
        // Versions sort newest first: the first record of a key is its newest.
        let write = Write::from_bytes(&value).map_err(|e| corrupted(e.to_string()))?;
        batch.put(Cf::Latest, key.clone(), encode(commit_ts, &write));
        last = Some(key);
        keys += 1;
        if batch.len() >= REBUILD_BATCH {
            engine.write(std::mem::take(&mut batch))?;
        }
    }
    engine.write(batch)?;
    Ok(keys)
}

/// Checks the index against the Write CF in `snapshot`: the first difference, if any.
/// For tests and consistency checks; it reads both column families whole.
pub fn verify(snapshot: &dyn Snapshot) -> std::result::Result<(), String> {
    let mut expected = BTreeMap::new();
    for item in snapshot.scan(Cf::Write, b"", b"", false) {
        let (versioned, value) = item.map_err(|e| e.to_string())?;
        let (key, commit_ts) =
            split_versioned_key(&versioned).ok_or_else(|| format!("write key {versioned:?}"))?;
        expected.entry(key).or_insert((commit_ts, value));
    }
    let mut actual = BTreeMap::new();
    for item in snapshot.scan(Cf::Latest, b"", b"", false) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let (commit_ts, write) = decode(&value).map_err(|e| e.to_string())?;
        actual.insert(key, (commit_ts, write.to_bytes()));
    }
    for key in expected.keys().chain(actual.keys()) {
        if expected.get(key) != actual.get(key) {
            return Err(format!(
                "key {}: the Write CF's newest record is {:?}, the index holds {:?}",
                key.escape_ascii(),
                expected.get(key),
                actual.get(key)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{MvccTxn, WriteType};
    use scandium_storage::MemoryEngine;

    fn put(ts: u64) -> Write {
        Write::new(WriteType::Put, TimeStamp(ts - 1), Some(vec![ts as u8]))
    }

    /// Applies `f`'s changes as a command would, then checks the index.
    fn command(engine: &MemoryEngine, f: impl FnOnce(&mut MvccTxn)) {
        let snapshot = engine.snapshot();
        let mut txn = MvccTxn::new();
        f(&mut txn);
        engine.write(txn.into_batch(&MvccReader::new(&*snapshot)).unwrap()).unwrap();
        verify(&*engine.snapshot()).unwrap();
    }

    fn newest(engine: &MemoryEngine, key: &[u8]) -> Option<u64> {
        let snapshot = engine.snapshot();
        MvccReader::new(&*snapshot).newest_write(key).unwrap().map(|(ts, _)| ts.0)
    }

    #[test]
    fn follows_puts_older_records_and_deletes() {
        let engine = MemoryEngine::new();
        command(&engine, |t| t.put_write(b"k", TimeStamp(10), &put(10)));
        assert_eq!(newest(&engine, b"k"), Some(10));
        // A rollback record below the newest commit does not replace it.
        let rollback = Write::new(WriteType::Rollback, TimeStamp(5), None);
        command(&engine, |t| t.put_write(b"k", TimeStamp(5), &rollback));
        assert_eq!(newest(&engine, b"k"), Some(10));
        // Rewriting the newest record (an overlapped rollback mark) rewrites the entry.
        let mut marked = put(10);
        marked.has_overlapped_rollback = true;
        command(&engine, |t| t.put_write(b"k", TimeStamp(10), &marked));
        let snapshot = engine.snapshot();
        let (_, write) = MvccReader::new(&*snapshot).newest_write(b"k").unwrap().unwrap();
        assert!(write.has_overlapped_rollback);
        // Deleting the newest falls back to the next record; deleting all removes the key.
        command(&engine, |t| t.delete_write(b"k", TimeStamp(10)));
        assert_eq!(newest(&engine, b"k"), Some(5));
        command(&engine, |t| {
            t.put_write(b"k", TimeStamp(3), &put(3));
            t.delete_write(b"k", TimeStamp(5));
        });
        assert_eq!(newest(&engine, b"k"), Some(3));
        command(&engine, |t| t.delete_write(b"k", TimeStamp(3)));
        assert_eq!(newest(&engine, b"k"), None);
        // Deleting what was never there changes nothing.
        command(&engine, |t| t.delete_write(b"absent", TimeStamp(3)));
        assert_eq!(newest(&engine, b"absent"), None);
    }

    #[test]
    fn rebuild_replaces_a_stale_index() {
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        for (key, ts) in [(&b"a"[..], 7), (b"a", 9), (b"b", 4)] {
            let versioned = scandium_types::mvcc::versioned_key(key, TimeStamp(ts));
            batch.put(Cf::Write, versioned, put(ts).to_bytes());
        }
        batch.put(Cf::Latest, b"stale".to_vec(), encode(TimeStamp(1), &put(1)));
        engine.write(batch).unwrap();
        assert!(verify(&*engine.snapshot()).is_err());
        assert_eq!(rebuild(&engine).unwrap(), 2);
        verify(&*engine.snapshot()).unwrap();
        assert_eq!(newest(&engine, b"a"), Some(9));
        assert_eq!(newest(&engine, b"stale"), None);
    }
}
