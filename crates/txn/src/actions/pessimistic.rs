//! Pessimistic locking: a transaction locks keys while it runs (before prewrite), so
//! writers of contended keys wait instead of aborting at commit.

use crate::error::{Result, TxnError};
use crate::mvcc::{Lock, LockType, MvccReader, MvccTxn, WriteType};
use scandium_types::TimeStamp;

/// A pessimistic lock request for one key.
#[derive(Clone, Debug, Default)]
pub struct PessimisticLockRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The transaction's primary key.
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    pub start_ts: TimeStamp,
    /// Lock TTL in milliseconds.
    pub lock_ttl: u64,
    /// The timestamp the key is locked for: no version newer than it may exist.
    pub for_update_ts: TimeStamp,
    /// The key must not exist (an insert).
    pub should_not_exist: bool,
    /// Lower bound of the eventual commit timestamp.
    pub min_commit_ts: TimeStamp,
}

/// Takes (or refreshes) the transaction's pessimistic lock on a key and returns the key's
/// latest committed value. A retry after the transaction committed the key does not lock
/// it again.
pub fn acquire_pessimistic_lock(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    req: &PessimisticLockRequest,
) -> Result<Option<Vec<u8>>> {
    let key = &req.key;
    if let Some(mut lock) = reader.load_lock(key)? {
        if lock.start_ts != req.start_ts.0 {
            return Err(TxnError::KeyIsLocked { key: key.clone(), lock: Box::new(lock) });
        }
        if lock.kind() == LockType::Pessimistic && req.for_update_ts.0 > lock.for_update_ts {
            lock.for_update_ts = req.for_update_ts.0;
            lock.ttl = lock.ttl.max(req.lock_ttl);
            txn.put_lock(key, &lock);
        }
        return reader.get_value(key, TimeStamp::MAX);
    }
    // One pass over the key's records, newest first: those at or after our start are
    // checked for conflicts, and the first Put or Delete is the latest value (one
    // iterator instead of two; positioning one is the dearest part of a lookup).
    let mut latest = None;
    for item in reader.writes_at_or_below(key, TimeStamp::MAX) {
        let (commit_ts, write) = item?;
        if commit_ts < req.start_ts {
            if latest.is_some() {
                break;
            }
            if matches!(write.kind(), WriteType::Put | WriteType::Delete) {
                latest = Some(write);
                break;
            }
            continue;
        }
        // Another transaction's commit at our start, marked with our rollback (the two
        // share one record): this transaction was rolled back, as if by a record of its
        // own. Passed over, a lock taken again let a commit of the primary follow the
        // rollback of its secondaries.
        if commit_ts == req.start_ts && write.has_overlapped_rollback {
            return Err(TxnError::PessimisticLockRolledBack {
                start_ts: req.start_ts,
                key: key.clone(),
            });
        }
        if write.start_ts == req.start_ts.0 {
            if write.kind() == WriteType::Rollback {
                return Err(TxnError::PessimisticLockRolledBack {
                    start_ts: req.start_ts,
                    key: key.clone(),
                });
            }
            // Committed by this transaction already: nothing left to lock.
            return reader.get_value(key, TimeStamp::MAX);
        }
        if commit_ts > req.for_update_ts && write.kind() != WriteType::Rollback {
            return Err(TxnError::WriteConflict {
                start_ts: req.start_ts,
                conflict_start_ts: TimeStamp(write.start_ts),
                conflict_commit_ts: commit_ts,
                key: key.clone(),
                primary: req.primary.clone(),
                self_rolled_back: false,
            });
        }
        if latest.is_none() && matches!(write.kind(), WriteType::Put | WriteType::Delete) {
            latest = Some(write);
        }
    }
    let value = match latest {
        Some(write) if write.kind() == WriteType::Put => Some(reader.load_data(key, write)?),
        _ => None,
    };
    if req.should_not_exist && value.is_some() {
        return Err(TxnError::AlreadyExist { key: key.clone() });
    }
    let lock = Lock {
        lock_type: LockType::Pessimistic as i32,
        primary: req.primary.clone(),
        start_ts: req.start_ts.0,
        ttl: req.lock_ttl,
        for_update_ts: req.for_update_ts.0,
        min_commit_ts: req.min_commit_ts.0,
        ..Default::default()
    };
    txn.put_lock(key, &lock);
    Ok(value)
}

/// Removes the transaction's pessimistic lock on `key` if it was taken at or below
/// `for_update_ts`; anything else is left alone.
pub fn pessimistic_rollback(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    start_ts: TimeStamp,
    for_update_ts: TimeStamp,
) -> Result<()> {
    if let Some(lock) = reader.load_lock(key)? {
        if lock.start_ts == start_ts.0
            && lock.kind() == LockType::Pessimistic
            && lock.for_update_ts <= for_update_ts.0
        {
            txn.unlock(key);
        }
    }
    Ok(())
}

/// Extends the TTL of the transaction's primary lock to at least `advise_ttl` and returns
/// the TTL now in force.
pub fn txn_heart_beat(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    primary: &[u8],
    start_ts: TimeStamp,
    advise_ttl: u64,
) -> Result<u64> {
    match reader.load_lock(primary)? {
        Some(mut lock) if lock.start_ts == start_ts.0 => {
            if advise_ttl > lock.ttl {
                lock.ttl = advise_ttl;
                txn.put_lock(primary, &lock);
            }
            Ok(lock.ttl)
        }
        _ => Err(TxnError::TxnNotFound { start_ts, primary_key: primary.to_vec() }),
    }
}
