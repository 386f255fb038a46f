//! Reads served per Region, for the Regions' traffic in heartbeats.
//!
//! Writes are counted where they are applied (the raftstore's `RegionStats`), on every
//! replica; reads never reach Raft, so the request path counts them here, and each
//! heartbeat takes what accumulated since the last one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Keys and bytes read per Region since the last [`ReadFlow::take`]. Holds only the Regions
/// read since then, so no more entries than Regions led here.
#[derive(Debug, Default)]
pub struct ReadFlow {
    regions: Mutex<HashMap<u64, (u64, u64)>>, // lookups only
    /// Keys and bytes read since the node started (for `/metrics`).
    keys: AtomicU64,
    bytes: AtomicU64,
}

impl ReadFlow {
    /// Counts a read of Region `region_id` that returned `keys` records of `bytes` bytes.
    pub fn record(&self, region_id: u64, keys: u64, bytes: u64) {
        if keys == 0 && bytes == 0 {
            return;
        }
        self.keys.fetch_add(keys, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = regions.entry(region_id).or_default();
        entry.0 += keys;
        entry.1 += bytes;
    }

    /// Keys and bytes read since the node started.
    pub fn totals(&self) -> (u64, u64) {
        (self.keys.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// What was read per Region since the last call, as `(keys, bytes)`.
    pub fn take(&self) -> HashMap<u64, (u64, u64)> {
        std::mem::take(&mut *self.regions.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_add_up_per_region_until_taken() {
        let flow = ReadFlow::default();
        flow.record(1, 2, 100);
        flow.record(1, 1, 50);
        flow.record(2, 0, 0);
        flow.record(3, 1, 10);
        let taken = flow.take();
        assert_eq!(taken.get(&1), Some(&(3, 150)));
        assert_eq!(taken.get(&2), None, "an empty read leaves no entry");
        assert_eq!(taken.get(&3), Some(&(1, 10)));
        assert!(flow.take().is_empty());
        assert_eq!(flow.totals(), (4, 160), "the totals run on");
    }
}
