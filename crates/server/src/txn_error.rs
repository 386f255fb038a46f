//! Mapping transactional failures onto kvproto: Region errors stay Region errors, and every
//! other failure becomes a `KeyError` the client knows how to act on.

use crate::error::RequestError;
use scandium_protocol::{errorpb, kvrpcpb};
use scandium_txn::mvcc::{Lock, LockType};
use scandium_txn::TxnError;

/// Result of a transactional command.
pub type TxnResult<T> = Result<T, Failure>;

/// Why a transactional request failed.
#[derive(Debug)]
pub enum Failure {
    /// The client must refresh its Region information and retry.
    Region(Box<errorpb::Error>),
    /// A key-level error (locked, conflict, ...), or a request the node refuses.
    Key(Box<kvrpcpb::KeyError>),
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Failure {
        match e {
            RequestError::Region(e) => Failure::Region(e),
            other => Failure::Key(Box::new(kvrpcpb::KeyError {
                abort: other.to_string(),
                ..Default::default()
            })),
        }
    }
}

impl From<TxnError> for Failure {
    fn from(e: TxnError) -> Failure {
        Failure::Key(Box::new(key_error(&e)))
    }
}

impl From<scandium_raftstore::RaftstoreError> for Failure {
    fn from(e: scandium_raftstore::RaftstoreError) -> Failure {
        RequestError::from(e).into()
    }
}

/// The `LockInfo` clients read to resolve a lock.
pub fn lock_info(key: &[u8], lock: &Lock) -> kvrpcpb::LockInfo {
    let lock_type = match lock.kind() {
        LockType::Put => kvrpcpb::Op::Put,
        LockType::Delete => kvrpcpb::Op::Del,
        LockType::Lock => kvrpcpb::Op::Lock,
        LockType::Pessimistic => kvrpcpb::Op::PessimisticLock,
    };
    kvrpcpb::LockInfo {
        primary_lock: lock.primary.clone(),
        lock_version: lock.start_ts,
        key: key.to_vec(),
        lock_ttl: lock.ttl,
        txn_size: lock.txn_size,
        lock_type: lock_type as i32,
        lock_for_update_ts: lock.for_update_ts,
        use_async_commit: lock.use_async_commit,
        min_commit_ts: lock.min_commit_ts,
        secondaries: lock.secondaries.clone(),
        ..Default::default()
    }
}

/// The `KeyError` for a transactional failure (TiKV's mapping).
pub fn key_error(e: &TxnError) -> kvrpcpb::KeyError {
    let error = build_key_error(e);
    crate::metrics::METRICS.key_error(&error);
    error
}

fn build_key_error(e: &TxnError) -> kvrpcpb::KeyError {
    let mut error = kvrpcpb::KeyError::default();
    match e {
        TxnError::KeyIsLocked { key, lock } => error.locked = Some(lock_info(key, lock)),
        TxnError::WriteConflict {
            start_ts,
            conflict_start_ts,
            conflict_commit_ts,
            key,
            primary,
            self_rolled_back,
        } => {
            let reason = if *self_rolled_back {
                kvrpcpb::write_conflict::Reason::SelfRolledBack
            } else {
                kvrpcpb::write_conflict::Reason::Optimistic
            };
            error.conflict = Some(kvrpcpb::WriteConflict {
                start_ts: start_ts.0,
                conflict_ts: conflict_start_ts.0,
                key: key.clone(),
                primary: primary.clone(),
                conflict_commit_ts: conflict_commit_ts.0,
                reason: reason as i32,
            });
        }
        TxnError::AlreadyExist { key } => {
            error.already_exist = Some(kvrpcpb::AlreadyExist { key: key.clone() })
        }
        TxnError::CommitTsExpired { start_ts, attempted_commit_ts, key, min_commit_ts } => {
            error.commit_ts_expired = Some(kvrpcpb::CommitTsExpired {
                start_ts: start_ts.0,
                attempted_commit_ts: attempted_commit_ts.0,
                key: key.clone(),
                min_commit_ts: min_commit_ts.0,
            });
        }
        TxnError::TxnNotFound { start_ts, primary_key } => {
            error.txn_not_found = Some(kvrpcpb::TxnNotFound {
                start_ts: start_ts.0,
                primary_key: primary_key.clone(),
            });
        }
        TxnError::Deadlock { lock_ts, lock_key, deadlock_key_hash } => {
            error.deadlock = Some(kvrpcpb::Deadlock {
                lock_ts: lock_ts.0,
                lock_key: lock_key.clone(),
                deadlock_key_hash: *deadlock_key_hash,
            });
        }
        TxnError::PrimaryMismatch { key, lock } => {
            error.primary_mismatch =
                Some(kvrpcpb::PrimaryMismatch { lock_info: Some(lock_info(key, lock)) });
        }
        // TiKV reports a missing lock at commit as retryable: the transaction must restart.
        TxnError::TxnLockNotFound { .. } => error.retryable = e.to_string(),
        _ => error.abort = e.to_string(),
    }
    error
}
