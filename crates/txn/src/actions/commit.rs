//! Commit: the second phase. Replaces the transaction's lock on each key with a commit
//! record at the commit timestamp.

use crate::error::{Result, TxnError};
use crate::mvcc::{Lock, LockType, MvccReader, MvccTxn, TxnCommitRecord, Write, WriteType};
use scandium_types::TimeStamp;

/// Commits `key` for transaction `start_ts` at `commit_ts`. A retry after the commit
/// succeeds without change; a key whose transaction was rolled back or never prewritten
/// fails.
pub fn commit(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    start_ts: TimeStamp,
    commit_ts: TimeStamp,
) -> Result<()> {
    if commit_ts <= start_ts {
        return Err(TxnError::Invalid(format!(
            "commit timestamp {commit_ts} is not after start {start_ts}"
        )));
    }
    match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts.0 => {
            if commit_ts.0 < lock.min_commit_ts {
                return Err(TxnError::CommitTsExpired {
                    start_ts,
                    attempted_commit_ts: commit_ts,
                    key: key.to_vec(),
                    min_commit_ts: TimeStamp(lock.min_commit_ts),
                });
            }
            if lock.kind() == LockType::Pessimistic {
                return Err(TxnError::TxnLockNotFound {
                    start_ts,
                    key: key.to_vec(),
                    reason: "only a pessimistic lock, never prewritten",
                });
            }
            commit_lock(reader, txn, key, lock, commit_ts)
        }
        _ => match reader.get_txn_commit_record(key, start_ts)? {
            TxnCommitRecord::Committed(..) => Ok(()),
            TxnCommitRecord::RolledBack => Err(TxnError::TxnLockNotFound {
                start_ts,
                key: key.to_vec(),
                reason: "rolled back",
            }),
            TxnCommitRecord::None => Err(TxnError::TxnLockNotFound {
                start_ts,
                key: key.to_vec(),
                reason: "not prewritten",
            }),
        },
    }
}

/// Turns `lock` into a commit record at `commit_ts` (no timestamp checks: the caller
/// decided the transaction committed there). A pessimistic lock carries no write and is
/// only removed.
pub(crate) fn commit_lock(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    lock: Lock,
    commit_ts: TimeStamp,
) -> Result<()> {
    let write_type = match lock.kind() {
        LockType::Put => WriteType::Put,
        LockType::Delete => WriteType::Delete,
        LockType::Lock => WriteType::Lock,
        LockType::Pessimistic => {
            txn.unlock(key);
            return Ok(());
        }
    };
    let mut write = Write::new(write_type, lock.ts(), lock.short_value);
    // Another transaction starting at our commit timestamp may have been rolled back here.
    if let Some(existing) = reader.write_at(key, commit_ts)? {
        if existing.kind() == WriteType::Rollback {
            write.has_overlapped_rollback = true;
        }
    }
    txn.put_write(key, commit_ts, &write);
    txn.unlock(key);
    Ok(())
}
