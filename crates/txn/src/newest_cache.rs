//! [`NewestCache`]: the newest Write record of recently written keys, in memory.
//!
//! Nearly every transactional command starts by asking for a key's newest record: a read
//! for its value, a prewrite for write conflicts, a commit for the record at its commit
//! timestamp. That is a point read of the Latest CF, which searches every memtable and
//! table, and was a fifth of the node's CPU under a write-heavy load.
//!
//! The cache is filled only by the commands that change a key's newest record, after their
//! change is applied: a command forgets its keys before it proposes, and records their new
//! newest records once applied, all under the keys' latches. It is never filled from a
//! storage read, so an interrupted command leaves a key uncached, never stale. A key is
//! therefore either absent or holds exactly what the Latest CF holds for it while no
//! command on it is running. A [`LockHint`](crate::LockHint) hands the cached records to a
//! reader: under latches for a write command, and for a read only for the keys the lock
//! index proves unlocked (the argument is in `docs/architecture/txn.md`).

use crate::mvcc::Newest;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

/// Bytes an entry costs beyond its key and value (the map's own bookkeeping).
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct EntryWeight;

impl Weighter<Vec<u8>, Newest> for EntryWeight {
    fn weight(&self, key: &Vec<u8>, newest: &Newest) -> u64 {
        let value = newest.as_ref().map_or(0, |(_, write)| {
            write.short_value.as_ref().map_or(0, Vec::len) + std::mem::size_of_val(write)
        });
        key.len() as u64 + value as u64 + ENTRY_OVERHEAD
    }
}

/// Recently written keys' newest records, at most `capacity_bytes` of them.
pub struct NewestCache {
    /// `None` when disabled.
    cache: Option<Cache<Vec<u8>, Newest, EntryWeight>>,
}

impl NewestCache {
    /// A cache holding at most about `capacity_bytes` (0 disables it).
    pub fn new(capacity_bytes: u64) -> NewestCache {
        let estimated_items = (capacity_bytes / 256).clamp(16, 1 << 20) as usize;
        let cache = (capacity_bytes > 0)
            .then(|| Cache::with_weighter(estimated_items, capacity_bytes, EntryWeight));
        NewestCache { cache }
    }

    /// The key's newest record, if cached.
    pub fn get(&self, key: &[u8]) -> Option<Newest> {
        self.cache.as_ref()?.get(key)
    }

    /// Forgets the keys a command is about to change. Call under their latches, before
    /// proposing.
    pub fn forget(&self, changes: &[(Vec<u8>, Newest)]) {
        let Some(cache) = &self.cache else { return };
        for (key, _) in changes {
            cache.remove(key.as_slice());
        }
    }

    /// Records the keys' newest records once the command that changed them is applied.
    /// Call under their latches.
    pub fn record(&self, changes: Vec<(Vec<u8>, Newest)>) {
        let Some(cache) = &self.cache else { return };
        for (key, newest) in changes {
            cache.insert(key, newest);
        }
    }

    /// Forgets `keys` (another replica's command changed their newest records).
    pub fn forget_keys<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let Some(cache) = &self.cache else { return };
        for key in keys {
            cache.remove(key);
        }
    }

    /// Forgets everything (a Region's data was replaced wholesale).
    pub fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// Bytes held now.
    pub fn weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{Write, WriteType};
    use scandium_types::TimeStamp;

    fn put(ts: u64) -> Newest {
        Some((TimeStamp(ts), Write::new(WriteType::Put, TimeStamp(ts - 1), Some(vec![7; 100]))))
    }

    #[test]
    fn forgets_before_a_change_and_records_after_it() {
        let cache = NewestCache::new(1 << 20);
        assert_eq!(cache.get(b"k"), None);
        cache.record(vec![(b"k".to_vec(), put(10))]);
        assert_eq!(cache.get(b"k"), Some(put(10)));
        cache.forget(&[(b"k".to_vec(), put(20))]);
        assert_eq!(cache.get(b"k"), None, "a command on the key is in flight");
        cache.record(vec![(b"k".to_vec(), None)]);
        assert_eq!(cache.get(b"k"), Some(None), "known to have no record");
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = NewestCache::new(64 << 10);
        for i in 0..10_000u64 {
            cache.record(vec![(i.to_be_bytes().to_vec(), put(i + 2))]);
        }
        assert!(cache.weight() <= 64 << 10, "{} bytes", cache.weight());
        assert!(cache.weight() > 32 << 10, "it keeps what fits: {} bytes", cache.weight());
    }

    #[test]
    fn zero_bytes_disables_it() {
        let cache = NewestCache::new(0);
        cache.record(vec![(b"k".to_vec(), put(10))]);
        assert_eq!(cache.get(b"k"), None);
    }
}
