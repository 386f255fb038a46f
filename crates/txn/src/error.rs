//! Errors of transactional commands. Each key-level variant maps to one kvproto `KeyError`.

use crate::mvcc::Lock;
use scandium_storage::StorageError;
use scandium_types::TimeStamp;
use thiserror::Error;

/// Why a transactional action failed for a key, or at all.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// The key is locked by another transaction that might commit below the reader.
    #[error("key {} is locked by transaction {}", key.escape_ascii(), lock.start_ts)]
    KeyIsLocked {
        /// The locked key.
        key: Vec<u8>,
        /// The lock.
        lock: Box<Lock>,
    },
    /// Another transaction committed a newer version.
    #[error("write conflict on {}: transaction {conflict_start_ts} committed at {conflict_commit_ts}", key.escape_ascii())]
    WriteConflict {
        /// The conflicting transaction's start.
        start_ts: TimeStamp,
        /// Start of the transaction that wrote the newer version.
        conflict_start_ts: TimeStamp,
        /// Commit timestamp of the newer version.
        conflict_commit_ts: TimeStamp,
        /// The key.
        key: Vec<u8>,
        /// The caller's primary key.
        primary: Vec<u8>,
        /// The conflict is with this transaction's own rollback.
        self_rolled_back: bool,
    },
    /// An insert or existence check found the key.
    #[error("key {} already exists", key.escape_ascii())]
    AlreadyExist {
        /// The key.
        key: Vec<u8>,
    },
    /// The commit timestamp is below the lock's minimum commit timestamp.
    #[error(
        "commit timestamp {attempted_commit_ts} of {} is below the minimum {min_commit_ts}",
        key.escape_ascii()
    )]
    CommitTsExpired {
        /// The transaction.
        start_ts: TimeStamp,
        /// The refused commit timestamp.
        attempted_commit_ts: TimeStamp,
        /// The key.
        key: Vec<u8>,
        /// The lock's minimum.
        min_commit_ts: TimeStamp,
    },
    /// The transaction has no lock and no commit record on the key: it was never prewritten
    /// here, or was rolled back.
    #[error("transaction {start_ts} has no lock on {} ({reason})", key.escape_ascii())]
    TxnLockNotFound {
        /// The transaction.
        start_ts: TimeStamp,
        /// The key.
        key: Vec<u8>,
        /// What was found instead.
        reason: &'static str,
    },
    /// The transaction is unknown at its primary key.
    #[error("transaction {start_ts} not found at its primary {}", primary_key.escape_ascii())]
    TxnNotFound {
        /// The transaction.
        start_ts: TimeStamp,
        /// The primary key asked about.
        primary_key: Vec<u8>,
    },
    /// The transaction was already committed; rolling it back is impossible.
    #[error("transaction {start_ts} is already committed at {commit_ts} on {}", key.escape_ascii())]
    Committed {
        /// The transaction.
        start_ts: TimeStamp,
        /// Its commit timestamp.
        commit_ts: TimeStamp,
        /// The key.
        key: Vec<u8>,
    },
    /// A pessimistic prewrite found no pessimistic lock of its own on a key.
    #[error("transaction {start_ts} holds no pessimistic lock on {}", key.escape_ascii())]
    PessimisticLockNotFound {
        /// The transaction.
        start_ts: TimeStamp,
        /// The key.
        key: Vec<u8>,
    },
    /// A pessimistic lock request came after the transaction was rolled back.
    #[error("transaction {start_ts} was rolled back on {}", key.escape_ascii())]
    PessimisticLockRolledBack {
        /// The transaction.
        start_ts: TimeStamp,
        /// The key.
        key: Vec<u8>,
    },
    /// Waiting for the lock would close a cycle of waiting transactions.
    #[error("deadlock: waiting for transaction {lock_ts} on {}", lock_key.escape_ascii())]
    Deadlock {
        /// The transaction waited for.
        lock_ts: TimeStamp,
        /// The key waited on.
        lock_key: Vec<u8>,
        /// Hash of the key, for the client's diagnostics.
        deadlock_key_hash: u64,
    },
    /// `CheckTxnStatus` was asked about a key that is not the transaction's primary.
    #[error("key {} is not the primary of transaction {}", key.escape_ascii(), lock.start_ts)]
    PrimaryMismatch {
        /// The key.
        key: Vec<u8>,
        /// The lock found there.
        lock: Box<Lock>,
    },
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A stored record could not be decoded.
    #[error("corrupted record: {0}")]
    Corrupted(String),
    /// The engine failed.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<StorageError> for TxnError {
    fn from(e: StorageError) -> TxnError {
        TxnError::Storage(e.to_string())
    }
}

impl From<prost::DecodeError> for TxnError {
    fn from(e: prost::DecodeError) -> TxnError {
        TxnError::Corrupted(e.to_string())
    }
}

/// Result of transactional actions.
pub type Result<T> = std::result::Result<T, TxnError>;
