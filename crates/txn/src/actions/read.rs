//! Snapshot reads: point get and scans, refusing to read past locks that might commit
//! below the read timestamp.

use crate::concurrency::lock_blocks_read;
use crate::error::{Result, TxnError};
use crate::mvcc::MvccReader;
use scandium_types::TimeStamp;

/// The value of `key` at `ts`.
pub fn point_get(reader: &MvccReader<'_>, key: &[u8], ts: TimeStamp) -> Result<Option<Vec<u8>>> {
    if let Some(lock) = reader.load_lock(key)? {
        if lock_blocks_read(&lock, ts) {
            return Err(TxnError::KeyIsLocked { key: key.to_vec(), lock: Box::new(lock) });
        }
    }
    reader.get_value(key, ts)
}

/// One result of a scan: a pair, or the lock that hides the key.
pub type ScanItem = (Vec<u8>, Result<Vec<u8>>);

/// Up to `limit` keys visible at `ts` in `[start, end)` (empty `end` = unbounded), in key
/// order or reverse key order. A key hidden by a lock comes back as its `KeyIsLocked`
/// error, in place, so the client can resolve it and retry.
pub fn scan(
    reader: &MvccReader<'_>,
    start: &[u8],
    end: &[u8],
    limit: usize,
    ts: TimeStamp,
    key_only: bool,
    reverse: bool,
) -> Result<Vec<ScanItem>> {
    let mut items: Vec<ScanItem> = Vec::new();
    if limit == 0 {
        return Ok(items);
    }
    let mut locks: Vec<(Vec<u8>, _)> =
        reader.scan_locks(start, end, 0, |lock| lock_blocks_read(lock, ts))?;
    if !reverse {
        locks.reverse();
    }
    // `locks` is now a stack whose top is the next locked key in scan order.
    let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
    let locked = |key: Vec<u8>, lock| {
        (key.clone(), Err(TxnError::KeyIsLocked { key, lock: Box::new(lock) }))
    };
    let (mut lower, mut upper) = (start.to_vec(), end.to_vec());
    loop {
        let page = reader.keys_with_writes(&lower, &upper, reverse, limit)?;
        for key in &page {
            while locks.last().is_some_and(|(k, _)| before(k, key)) && items.len() < limit {
                let (k, lock) = locks.pop().expect("checked non-empty");
                items.push(locked(k, lock));
            }
            if items.len() >= limit {
                return Ok(items);
            }
            if locks.last().is_some_and(|(k, _)| k == key) {
                let (k, lock) = locks.pop().expect("checked non-empty");
                items.push(locked(k, lock));
            } else if let Some(value) = reader.get_value(key, ts)? {
                items.push((key.clone(), Ok(if key_only { Vec::new() } else { value })));
            }
            if items.len() >= limit {
                return Ok(items);
            }
        }
        match page.last() {
            Some(last) if page.len() >= limit && reverse => upper = last.clone(),
            Some(last) if page.len() >= limit => lower = next_key(last),
            _ => break,
        }
    }
    while items.len() < limit {
        let Some((k, lock)) = locks.pop() else { break };
        items.push(locked(k, lock));
    }
    Ok(items)
}

/// The smallest key greater than `key`.
fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}
