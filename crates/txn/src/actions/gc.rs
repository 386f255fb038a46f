//! Garbage collection of old versions.
//!
//! A reader at or above the safe point sees, for each key, the newest Put or Delete at or
//! below the safe point (or something newer). Everything older is invisible to all such
//! readers and is deleted, as are Lock and Rollback records at or below the safe point, and
//! a Delete that is the newest visible version (there is nothing under it to hide).

use crate::error::Result;
use crate::mvcc::{MvccReader, MvccTxn, WriteType};
use scandium_types::TimeStamp;

/// Deletes the versions of `key` that no reader at or above `safe_point` can see; returns
/// how many records were deleted.
pub fn gc_key(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    key: &[u8],
    safe_point: TimeStamp,
) -> Result<usize> {
    let mut deleted = 0;
    let mut found_visible = false;
    for item in reader.writes_at_or_below(key, safe_point) {
        let (commit_ts, write) = item?;
        let keep = !found_visible && write.kind() == WriteType::Put;
        found_visible |= matches!(write.kind(), WriteType::Put | WriteType::Delete);
        if keep {
            continue;
        }
        if write.kind() == WriteType::Put && write.short_value.is_none() {
            txn.delete_value(key, TimeStamp(write.start_ts));
        }
        txn.delete_write(key, commit_ts);
        deleted += 1;
    }
    Ok(deleted)
}
