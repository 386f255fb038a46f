//! The records of the Lock and Write column families. Protobuf (prost) on disk, so fields
//! can be added without a migration.

use prost::Message as _;
use scandium_types::TimeStamp;

/// Values up to this many bytes live inside their Write (or Lock) record; longer ones in
/// the Default CF. TiKV's limit.
pub const SHORT_VALUE_MAX_LEN: usize = 255;

/// What a lock will become when its transaction commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum LockType {
    /// Writes a value.
    Put = 0,
    /// Deletes the key.
    Delete = 1,
    /// Writes nothing; only guards the key against concurrent writers.
    Lock = 2,
    /// A pessimistic lock: taken while the transaction runs, replaced by one of the
    /// above at prewrite. Never blocks readers.
    Pessimistic = 3,
}

/// A transaction's lock on a key.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Lock {
    /// See [`LockType`].
    #[prost(enumeration = "LockType", tag = "1")]
    pub lock_type: i32,
    /// The transaction's primary key, whose state decides the transaction's fate.
    #[prost(bytes = "vec", tag = "2")]
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "3")]
    pub start_ts: u64,
    /// Milliseconds after `start_ts`'s physical time at which the lock may be cleaned up.
    #[prost(uint64, tag = "4")]
    pub ttl: u64,
    /// The value, when short.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub short_value: Option<Vec<u8>>,
    /// For pessimistic transactions: the timestamp the key was locked for.
    #[prost(uint64, tag = "6")]
    pub for_update_ts: u64,
    /// Number of keys in the transaction (a hint for lock resolution).
    #[prost(uint64, tag = "7")]
    pub txn_size: u64,
    /// The transaction may not commit below this timestamp.
    #[prost(uint64, tag = "8")]
    pub min_commit_ts: u64,
    /// The transaction uses async commit: it is committed once all its locks are written.
    #[prost(bool, tag = "9")]
    pub use_async_commit: bool,
    /// With async commit, on the primary only: every other key of the transaction.
    #[prost(bytes = "vec", repeated, tag = "10")]
    pub secondaries: Vec<Vec<u8>>,
}

impl Lock {
    /// The lock's type; unknown values read as [`LockType::Lock`], the harmless one.
    pub fn kind(&self) -> LockType {
        LockType::try_from(self.lock_type).unwrap_or(LockType::Lock)
    }

    /// The start timestamp.
    pub fn ts(&self) -> TimeStamp {
        TimeStamp(self.start_ts)
    }

    /// Whether the lock's TTL has run out at `current_ts` (physical parts compared in
    /// milliseconds; `TimeStamp::MAX` expires every lock).
    pub fn is_expired(&self, current_ts: TimeStamp) -> bool {
        self.ts().physical().saturating_add(self.ttl) < current_ts.physical()
    }

    /// Encodes for the Lock CF.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes from the Lock CF.
    pub fn from_bytes(bytes: &[u8]) -> Result<Lock, prost::DecodeError> {
        Lock::decode(bytes)
    }
}

/// What a Write record says happened to the key at its commit timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum WriteType {
    /// A value was written.
    Put = 0,
    /// The key was deleted.
    Delete = 1,
    /// The key was only locked; readers look past it.
    Lock = 2,
    /// The transaction starting at this timestamp was rolled back; readers look past it,
    /// and a late prewrite of that transaction is refused.
    Rollback = 3,
}

/// A commit or rollback record.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Write {
    /// See [`WriteType`].
    #[prost(enumeration = "WriteType", tag = "1")]
    pub write_type: i32,
    /// Start timestamp of the transaction that wrote the record.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
    /// The value, when short (Put only).
    #[prost(bytes = "vec", optional, tag = "3")]
    pub short_value: Option<Vec<u8>>,
    /// A transaction starting at this record's commit timestamp was also rolled back here
    /// (async commit can give a commit timestamp equal to another transaction's start).
    #[prost(bool, tag = "4")]
    pub has_overlapped_rollback: bool,
}

impl Write {
    /// A record of the given type.
    pub fn new(write_type: WriteType, start_ts: TimeStamp, short_value: Option<Vec<u8>>) -> Write {
        Write {
            write_type: write_type as i32,
            start_ts: start_ts.0,
            short_value,
            has_overlapped_rollback: false,
        }
    }

    /// The record's type; unknown values read as [`WriteType::Lock`] (looked past).
    pub fn kind(&self) -> WriteType {
        WriteType::try_from(self.write_type).unwrap_or(WriteType::Lock)
    }

    /// Encodes for the Write CF.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes from the Write CF.
    pub fn from_bytes(bytes: &[u8]) -> Result<Write, prost::DecodeError> {
        Write::decode(bytes)
    }
}
