//! Latches: per-key mutual exclusion for commands that read before they write.
//!
//! A command hashes each of its keys to one of a fixed number of slots and locks the slots
//! in ascending order (so two commands can never wait for each other in a cycle). It holds
//! them from before it reads its snapshot until its write has been applied, so no other
//! command on those keys can slip in between. Slots are fair (first come, first served).
//! Distinct keys may share a slot; that only costs concurrency, never correctness.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// A fixed set of latch slots.
pub struct Latches {
    slots: Vec<Arc<Mutex<()>>>,
}

/// Slots held by one command; dropping it releases them.
pub struct LatchGuard {
    _slots: Vec<OwnedMutexGuard<()>>,
}

impl Latches {
    /// Creates `count` slots (rounded up to at least 1).
    pub fn new(count: usize) -> Latches {
        Latches { slots: (0..count.max(1)).map(|_| Arc::new(Mutex::new(()))).collect() }
    }

    /// Waits for and takes the slots of `keys`.
    pub async fn acquire<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = K>) -> LatchGuard {
        let mut indexes: Vec<usize> = keys.into_iter().map(|k| self.slot_of(k.as_ref())).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut slots = Vec::with_capacity(indexes.len());
        for index in indexes {
            slots.push(self.slots[index].clone().lock_owned().await);
        }
        LatchGuard { _slots: slots }
    }

    fn slot_of(&self, key: &[u8]) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % self.slots.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_waits_distinct_keys_do_not() {
        let latches = Arc::new(Latches::new(1 << 12));
        let held = latches.acquire([b"a".as_slice()]).await;
        let other =
            tokio::time::timeout(Duration::from_millis(50), latches.acquire([b"zz".as_slice()]));
        // "a" and "zz" could share a slot by chance; pick keys that do not.
        assert_ne!(latches.slot_of(b"a"), latches.slot_of(b"zz"));
        assert!(other.await.is_ok(), "a different key is not blocked");
        let same =
            tokio::time::timeout(Duration::from_millis(50), latches.acquire([b"a".as_slice()]));
        assert!(same.await.is_err(), "the same key waits");
        drop(held);
        let same =
            tokio::time::timeout(Duration::from_millis(500), latches.acquire([b"a".as_slice()]));
        assert!(same.await.is_ok(), "released on drop");
    }

    #[tokio::test]
    async fn overlapping_multi_key_commands_do_not_deadlock() {
        let latches = Arc::new(Latches::new(64));
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let latches = latches.clone();
            tasks.push(tokio::spawn(async move {
                let keys = [vec![i % 5], vec![(i + 1) % 5], vec![(i + 3) % 7]];
                let _guard = latches.acquire(keys.iter()).await;
                tokio::task::yield_now().await;
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        }
    }
}
