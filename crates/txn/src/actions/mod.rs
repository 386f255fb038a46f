//! Percolator actions: pure functions from a snapshot ([`MvccReader`]) and a request to
//! the changes they make ([`MvccTxn`]). One module per concern; the server composes them
//! into commands (one per RPC) with latches and Raft.
//!
//! Every action is idempotent: a client retries requests whose answers it did not get,
//! sometimes after the transaction has finished, and a retry must not change the outcome.

pub mod cleanup;
pub mod commit;
pub mod gc;
pub mod pessimistic;
pub mod prewrite;
pub mod read;

use crate::mvcc::{Lock, LockType, MvccReader, MvccTxn, Write, WriteType, SHORT_VALUE_MAX_LEN};
use scandium_types::TimeStamp;

/// Writes a Rollback record for `start_ts` on `key`. If another transaction committed at
/// exactly `start_ts` (possible with async commit), its record is kept and marked instead.
pub(crate) fn write_rollback_record(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    start_ts: TimeStamp,
) -> crate::Result<()> {
    match reader.write_at(key, start_ts)? {
        Some(mut write) if write.kind() != WriteType::Rollback => {
            if !write.has_overlapped_rollback {
                write.has_overlapped_rollback = true;
                txn.put_write(key, start_ts, &write);
            }
        }
        _ => txn.put_write(key, start_ts, &Write::new(WriteType::Rollback, start_ts, None)),
    }
    Ok(())
}

/// Removes a transaction's lock and any long value it stored.
pub(crate) fn remove_lock(txn: &mut MvccTxn, key: &[u8], lock: &Lock) {
    if lock.kind() == LockType::Put && lock.short_value.is_none() {
        txn.delete_value(key, lock.ts());
    }
    txn.unlock(key);
}

/// Splits a value into the lock's inline part or a Default CF write.
pub(crate) fn place_value(
    txn: &mut MvccTxn,
    key: &[u8],
    start_ts: TimeStamp,
    value: Vec<u8>,
) -> Option<Vec<u8>> {
    if value.len() <= SHORT_VALUE_MAX_LEN {
        Some(value)
    } else {
        txn.put_value(key, start_ts, value);
        None
    }
}
