//! Waiting for locks, and the deadlock detector.
//!
//! A pessimistic lock request that meets another transaction's lock may wait (bounded by
//! its `wait_timeout` and the client's deadline) for the lock to go away, instead of
//! failing at once. Waits form a graph of transactions; a wait that would close a cycle is
//! refused with a deadlock error instead.
//!
//! Wake-ups cannot be missed: a waiter registers while it still holds the latch of the
//! key, and a lock can only be removed by a command holding that latch, which notifies the
//! key's waiters once its change is applied.

use scandium_types::TimeStamp;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

/// Why a wait was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Deadlock {
    /// Hash of the key, as kvproto reports it.
    pub key_hash: u64,
}

#[derive(Default)]
struct Inner {
    /// Waiters per locked key.
    keys: HashMap<Vec<u8>, Arc<Notify>>,
    /// Waiting transaction -> the transaction it waits for.
    waits_for: HashMap<u64, u64>,
}

/// The node's lock waits.
#[derive(Clone, Default)]
pub struct LockWaits {
    inner: Arc<Mutex<Inner>>,
}

/// A registered wait: the edge in the wait graph and the (already enabled) wake-up.
pub struct Wait {
    waits: LockWaits,
    waiter: u64,
    notified: Pin<Box<OwnedNotified>>,
}

impl LockWaits {
    /// Registers `waiter` as waiting for `holder`'s lock on `key`, unless that closes a
    /// cycle. Call while holding the key's latch; then release the latch and await.
    pub fn register(
        &self,
        waiter: TimeStamp,
        holder: TimeStamp,
        key: &[u8],
    ) -> Result<Wait, Deadlock> {
        let mut inner = self.lock();
        let mut next = holder.0;
        for _ in 0..=inner.waits_for.len() {
            if next == waiter.0 {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                crate::metrics::METRICS.deadlocks.inc();
                return Err(Deadlock { key_hash: hasher.finish() });
            }
            match inner.waits_for.get(&next) {
                Some(&further) => next = further,
                None => break,
            }
        }
        inner.waits_for.insert(waiter.0, holder.0);
        crate::metrics::METRICS.lock_waits.inc();
        let notify = inner.keys.entry(key.to_vec()).or_default().clone();
        // Enabled now, under the latch, so a wake-up that comes before the wait is kept.
        let mut notified = Box::pin(notify.notified_owned());
        notified.as_mut().enable();
        Ok(Wait { waits: self.clone(), waiter: waiter.0, notified })
    }

    /// Wakes every waiter of `keys` (their locks were removed).
    pub fn wake(&self, keys: &[Vec<u8>]) {
        if keys.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for key in keys {
            if let Some(notify) = inner.keys.remove(key) {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every waiter (this node lost leadership of some Region: waiters re-check
    /// and answer `NotLeader` rather than wait for a lock release that will not come here).
    pub fn wake_all(&self) {
        let mut inner = self.lock();
        for (_, notify) in inner.keys.drain() {
            notify.notify_waiters();
        }
    }

    /// Whether `txn` is waiting for a lock now; lets tests and diagnostics observe a wait
    /// instead of guessing when it began.
    pub fn is_waiting(&self, txn: TimeStamp) -> bool {
        self.lock().waits_for.contains_key(&txn.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Wait {
    /// Waits until woken or `timeout` passes.
    pub async fn wait(mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notified.as_mut()).await;
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.waits.lock().waits_for.remove(&self.waiter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_refused() {
        let waits = LockWaits::default();
        let a = waits.register(TimeStamp(1), TimeStamp(2), b"k2").unwrap();
        let b = waits.register(TimeStamp(2), TimeStamp(3), b"k3").unwrap();
        assert!(waits.register(TimeStamp(3), TimeStamp(1), b"k1").is_err(), "3 -> 1 -> 2 -> 3");
        drop(b);
        assert!(waits.register(TimeStamp(3), TimeStamp(1), b"k1").is_ok(), "the cycle is gone");
        drop(a);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let waits = LockWaits::default();
        let wait = waits.register(TimeStamp(1), TimeStamp(2), b"k").unwrap();
        waits.wake(&[b"k".to_vec()]);
        let waited =
            tokio::time::timeout(Duration::from_secs(5), wait.wait(Duration::from_secs(60))).await;
        assert!(waited.is_ok(), "woken, not timed out");
    }
}
