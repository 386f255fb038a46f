//! Ending transactions that did not commit, and finding out whether a transaction did:
//! rollback, cleanup, check-transaction-status (at the primary), check-secondary-locks
//! (async commit) and lock resolution.

use crate::actions::commit::commit_lock;
use crate::actions::{remove_lock, write_rollback_record};
use crate::concurrency::ConcurrencyManager;
use crate::error::{Result, TxnError};
use crate::mvcc::{Lock, LockType, MvccReader, MvccTxn, TxnCommitRecord};
use scandium_types::TimeStamp;

/// Rolls transaction `start_ts` back on `key`: removes its lock and leaves a Rollback record
/// so that a late prewrite is refused. Idempotent; fails if the transaction committed.
pub fn rollback(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    start_ts: TimeStamp,
) -> Result<()> {
    match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts.0 => {
            remove_lock(txn, key, &lock);
            write_rollback_record(reader, txn, key, start_ts)
        }
        _ => match reader.get_txn_commit_record(key, start_ts)? {
            TxnCommitRecord::Committed(commit_ts, _) => {
                Err(TxnError::Committed { start_ts, commit_ts, key: key.to_vec() })
            }
            TxnCommitRecord::RolledBack => Ok(()),
            TxnCommitRecord::None => write_rollback_record(reader, txn, key, start_ts),
        },
    }
}

/// `KvCleanup`: rolls back `key` for `start_ts` unless its lock is still alive at
/// `current_ts` (0 = do not check the TTL).
pub fn cleanup(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    start_ts: TimeStamp,
    current_ts: TimeStamp,
) -> Result<()> {
    if let Some(lock) = reader.load_lock(key)? {
        if lock.start_ts == start_ts.0
            && current_ts != TimeStamp::ZERO
            && !lock.is_expired(current_ts)
        {
            return Err(TxnError::KeyIsLocked { key: key.to_vec(), lock: Box::new(lock) });
        }
    }
    rollback(reader, txn, key, start_ts)
}

/// The state of a transaction, as its primary key tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Rolled back (now or before).
    RolledBack,
    /// Committed at this timestamp.
    Committed(TimeStamp),
    /// Still running: the (possibly updated) primary lock.
    Locked(Box<Lock>),
}

/// What `check_txn_status` did, reported to the client (kvrpcpb `Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusAction {
    /// Only looked.
    NoAction,
    /// Rolled back an expired lock.
    TtlExpireRollback,
    /// Wrote a rollback record for a transaction that left nothing.
    LockNotExistRollback,
    /// Raised the lock's `min_commit_ts` above the caller, so the caller may read past it.
    MinCommitTsPushed,
    /// Removed an expired pessimistic lock.
    TtlExpirePessimisticRollback,
    /// Found nothing and, resolving a pessimistic lock, wrote nothing.
    LockNotExistDoNothing,
}

/// The request of `check_txn_status`.
#[derive(Clone, Debug, Default)]
pub struct CheckTxnStatus {
    /// The transaction's primary key.
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    pub lock_ts: TimeStamp,
    /// Start timestamp of the reader asking (0 if none): an alive lock's `min_commit_ts`
    /// is pushed above it.
    pub caller_start_ts: TimeStamp,
    /// Now, for the TTL check (`MAX` expires every lock).
    pub current_ts: TimeStamp,
    /// Write a rollback if the transaction left nothing.
    pub rollback_if_not_exist: bool,
    /// Treat an async-commit lock like any other (may roll it back).
    pub force_sync_commit: bool,
    /// The caller is resolving a pessimistic lock: an expired pessimistic primary is only
    /// removed, and a missing one is left alone.
    pub resolving_pessimistic_lock: bool,
    /// Fail with `PrimaryMismatch` if the key is not the lock's primary.
    pub verify_is_primary: bool,
}

/// Decides, at the primary, whether a transaction committed, rolled back, or is running,
/// rolling back an expired transaction on the way (TiKV's algorithm).
pub fn check_txn_status(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    cm: &ConcurrencyManager,
    req: &CheckTxnStatus,
) -> Result<(TxnStatus, StatusAction)> {
    cm.update_max_ts_from_client(req.caller_start_ts)?;
    let key = &req.primary;
    if let Some(mut lock) = reader.load_lock(key)?.filter(|l| l.start_ts == req.lock_ts.0) {
        if req.verify_is_primary && lock.primary != *key {
            return Err(TxnError::PrimaryMismatch { key: key.clone(), lock: Box::new(lock) });
        }
        if lock.use_async_commit && !req.force_sync_commit {
            // Its fate is decided by its secondaries; never roll it back from here.
            return Ok((TxnStatus::Locked(Box::new(lock)), StatusAction::NoAction));
        }
        if lock.is_expired(req.current_ts) {
            if lock.kind() == LockType::Pessimistic && req.resolving_pessimistic_lock {
                txn.unlock(key);
                return Ok((TxnStatus::RolledBack, StatusAction::TtlExpirePessimisticRollback));
            }
            remove_lock(txn, key, &lock);
            write_rollback_record(reader, txn, key, req.lock_ts)?;
            return Ok((TxnStatus::RolledBack, StatusAction::TtlExpireRollback));
        }
        let caller = req.caller_start_ts;
        let pushable = lock.kind() != LockType::Pessimistic
            && caller != TimeStamp::ZERO
            && caller != TimeStamp::MAX;
        if pushable && lock.min_commit_ts <= caller.0 {
            lock.min_commit_ts = caller.next().0;
            txn.put_lock(key, &lock);
            return Ok((TxnStatus::Locked(Box::new(lock)), StatusAction::MinCommitTsPushed));
        }
        return Ok((TxnStatus::Locked(Box::new(lock)), StatusAction::NoAction));
    }
    match reader.get_txn_commit_record(key, req.lock_ts)? {
        TxnCommitRecord::Committed(commit_ts, _) => {
            Ok((TxnStatus::Committed(commit_ts), StatusAction::NoAction))
        }
        TxnCommitRecord::RolledBack => Ok((TxnStatus::RolledBack, StatusAction::NoAction)),
        TxnCommitRecord::None if req.rollback_if_not_exist => {
            if req.resolving_pessimistic_lock {
                return Ok((TxnStatus::RolledBack, StatusAction::LockNotExistDoNothing));
            }
            write_rollback_record(reader, txn, key, req.lock_ts)?;
            Ok((TxnStatus::RolledBack, StatusAction::LockNotExistRollback))
        }
        TxnCommitRecord::None => {
            Err(TxnError::TxnNotFound { start_ts: req.lock_ts, primary_key: key.clone() })
        }
    }
}

/// What the secondaries of an async-commit transaction say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecondaryStatus {
    /// Every key still holds a prewrite lock: the transaction is committed (at the largest
    /// `min_commit_ts`) once all of them are seen.
    Locked(Vec<(Vec<u8>, Lock)>),
    /// Some key was committed at this timestamp.
    Committed(TimeStamp),
    /// Some key was never prewritten or was rolled back (now rolled back for good).
    RolledBack,
}

/// `KvCheckSecondaryLocks` for `keys` of transaction `start_ts`.
pub fn check_secondary_locks(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    keys: &[Vec<u8>],
    start_ts: TimeStamp,
) -> Result<SecondaryStatus> {
    let mut locks = Vec::new();
    for key in keys {
        match reader.load_lock(key)? {
            Some(lock) if lock.start_ts == start_ts.0 && lock.kind() != LockType::Pessimistic => {
                locks.push((key.clone(), lock));
                continue;
            }
            Some(lock) if lock.start_ts == start_ts.0 => {
                // Only a pessimistic lock: the prewrite never reached this key.
                txn.unlock(key);
                write_rollback_record(reader, txn, key, start_ts)?;
                return Ok(SecondaryStatus::RolledBack);
            }
            _ => {}
        }
        match reader.get_txn_commit_record(key, start_ts)? {
            TxnCommitRecord::Committed(commit_ts, _) => {
                return Ok(SecondaryStatus::Committed(commit_ts))
            }
            TxnCommitRecord::RolledBack => return Ok(SecondaryStatus::RolledBack),
            TxnCommitRecord::None => {
                write_rollback_record(reader, txn, key, start_ts)?;
                return Ok(SecondaryStatus::RolledBack);
            }
        }
    }
    Ok(SecondaryStatus::Locked(locks))
}

/// Resolves one lock of a transaction whose fate is known: commits it at `commit_ts`, or
/// rolls it back when `commit_ts` is zero.
pub fn resolve_lock(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    lock: Lock,
    commit_ts: TimeStamp,
) -> Result<()> {
    if commit_ts == TimeStamp::ZERO {
        let start_ts = lock.ts();
        remove_lock(txn, key, &lock);
        return write_rollback_record(reader, txn, key, start_ts);
    }
    if commit_ts <= lock.ts() {
        return Err(TxnError::Invalid(format!(
            "commit timestamp {commit_ts} is not after start {}",
            lock.start_ts
        )));
    }
    commit_lock(reader, txn, key, lock, commit_ts)
}
