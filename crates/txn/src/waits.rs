//! What commands wait for besides latches, sans-I/O: other transactions' locks (with the
//! deadlock detector), and a new leader's `max_ts`.
//!
//! A waiting command is known by its id; whoever ends the wait calls the node's [`Wake`]
//! with it, and the driver resumes the command, which then looks again (a wake-up is a
//! hint, never a promise). How long a command waits at most is part of its wait effect:
//! the driver's clock, not these tables, ends a wait that nobody ends.

use crate::wake::Wake;
use scandium_types::{RegionId, TimeStamp};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a lock wait was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Deadlock {
    /// Hash of the key, as kvproto reports it.
    pub key_hash: u64,
}

#[derive(Default)]
struct LockWaitsInner {
    /// Commands waiting per locked key (ordered: who is woken first must not depend on a
    /// hash seed, or the simulator's runs would not replay).
    keys: BTreeMap<Vec<u8>, Vec<u64>>,
    /// Waiting transaction -> each of its waits: (command, the transaction it waits
    /// for). One transaction may wait in several Regions at once, each wait an edge.
    waits_for: HashMap<u64, Vec<(u64, u64)>>, // lookups only
}

impl LockWaitsInner {
    /// Drops the edges of the waits of commands `woken`.
    fn forget(&mut self, woken: &[u64]) {
        if woken.is_empty() {
            return;
        }
        self.waits_for.retain(|_, waits| {
            waits.retain(|(cid, _)| !woken.contains(cid));
            !waits.is_empty()
        });
    }

    /// Whether `from` waits, through any chain of waits, for `to`.
    fn reaches(&self, from: u64, to: u64) -> bool {
        let mut seen = HashSet::new();
        let mut next = vec![from];
        while let Some(txn) = next.pop() {
            if txn == to {
                return true;
            }
            if seen.insert(txn) {
                if let Some(waits) = self.waits_for.get(&txn) {
                    next.extend(waits.iter().map(|&(_, holder)| holder));
                }
            }
        }
        false
    }
}

/// Pessimistic lock requests waiting for other transactions' locks, and the graph of
/// which transaction waits for which.
///
/// Wake-ups cannot be missed: a waiter registers while it still holds the latch of the
/// key, and a lock can only be removed by a command holding that latch, which wakes the
/// key's waiters once its change is applied.
#[derive(Clone)]
pub struct LockWaits {
    inner: Arc<Mutex<LockWaitsInner>>,
    wake: Arc<dyn Wake>,
    waited: Arc<AtomicU64>,
    deadlocks: Arc<AtomicU64>,
}

/// A registered wait: the edge in the wait graph and the command's place among the key's
/// waiters, both removed when it is dropped.
pub struct LockWait {
    waits: LockWaits,
    waiter: u64,
    cid: u64,
    key: Vec<u8>,
}

impl LockWaits {
    /// Waits whose ends are told through `wake`.
    pub fn new(wake: Arc<dyn Wake>) -> LockWaits {
        LockWaits { inner: Arc::default(), wake, waited: Arc::default(), deadlocks: Arc::default() }
    }

    /// Registers command `cid` of transaction `waiter` as waiting for `holder`'s lock on
    /// `key`, unless that closes a cycle of waiting transactions. Call while holding the
    /// key's latch, then release the latch and wait.
    pub fn register(
        &self,
        cid: u64,
        waiter: TimeStamp,
        holder: TimeStamp,
        key: &[u8],
    ) -> Result<LockWait, Deadlock> {
        let mut inner = self.lock();
        if inner.reaches(holder.0, waiter.0) {
            let mut hasher = DefaultHasher::new();
            key.hash(&mut hasher);
            self.deadlocks.fetch_add(1, Ordering::Relaxed);
            return Err(Deadlock { key_hash: hasher.finish() });
        }
        inner.waits_for.entry(waiter.0).or_default().push((cid, holder.0));
        inner.keys.entry(key.to_vec()).or_default().push(cid);
        self.waited.fetch_add(1, Ordering::Relaxed);
        Ok(LockWait { waits: self.clone(), waiter: waiter.0, cid, key: key.to_vec() })
    }

    /// Wakes every waiter of `keys` (their locks were removed). Their edges go at once:
    /// kept until each woken command dropped its wait, the holder, waiting in turn for a
    /// woken transaction, met a cycle that no longer was.
    pub fn wake(&self, keys: &[Vec<u8>]) {
        if keys.is_empty() {
            return;
        }
        let woken: Vec<u64> = {
            let mut inner = self.lock();
            if inner.keys.is_empty() {
                return;
            }
            let woken: Vec<u64> =
                keys.iter().filter_map(|key| inner.keys.remove(key)).flatten().collect();
            inner.forget(&woken);
            woken
        };
        woken.into_iter().for_each(|cid| self.wake.wake(cid));
    }

    /// Wakes every waiter (this node lost leadership of some Region: waiters look at
    /// their Region again and answer `NotLeader` rather than wait for a release that will
    /// not come here).
    pub fn wake_all(&self) {
        let woken: Vec<u64> = {
            let mut inner = self.lock();
            inner.waits_for.clear();
            std::mem::take(&mut inner.keys).into_values().flatten().collect()
        };
        woken.into_iter().for_each(|cid| self.wake.wake(cid));
    }

    /// Whether `txn` is waiting for a lock now; lets tests and diagnostics observe a wait
    /// instead of guessing when it began.
    pub fn is_waiting(&self, txn: TimeStamp) -> bool {
        self.lock().waits_for.contains_key(&txn.0)
    }

    /// Waits registered since the node started.
    pub fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    /// Waits refused as deadlocks since the node started.
    pub fn deadlocks(&self) -> u64 {
        self.deadlocks.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, LockWaitsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LockWait {
    fn drop(&mut self) {
        let mut inner = self.waits.lock();
        if let Some(waits) = inner.waits_for.get_mut(&self.waiter) {
            waits.retain(|&(cid, _)| cid != self.cid);
            if waits.is_empty() {
                inner.waits_for.remove(&self.waiter);
            }
        }
        if let Some(cids) = inner.keys.get_mut(&self.key) {
            cids.retain(|&c| c != self.cid);
            if cids.is_empty() {
                inner.keys.remove(&self.key);
            }
        }
    }
}

#[derive(Default)]
struct MaxTsInner {
    /// Region -> the term in which its leader here raised `max_ts`.
    synced: HashMap<RegionId, u64>, // lookups only
    /// Commands waiting for a Region's synchronisation.
    waiting: BTreeMap<RegionId, Vec<u64>>,
}

/// Which Regions led here have raised `max_ts` to a fresh timestamp since they gained
/// leadership, by term.
///
/// Async commit and one-phase commit choose their commit timestamp from `max_ts`; reads
/// the previous leader served raised only *its* `max_ts`. So a new leader first takes a
/// timestamp from the oracle (issued after every one of those reads) into `max_ts`, and
/// until then such prewrites wait.
pub struct MaxTsSync {
    inner: Mutex<MaxTsInner>,
    wake: Arc<dyn Wake>,
    /// Deliberately broken (the simulator proves its checks catch it): every Region
    /// counts as synchronised.
    disabled: bool,
}

impl MaxTsSync {
    /// Synchronisations whose waiters are woken through `wake`.
    pub fn new(wake: Arc<dyn Wake>, disabled: bool) -> MaxTsSync {
        MaxTsSync { inner: Mutex::default(), wake, disabled }
    }

    /// Whether Region `region_id`, led here at `term`, may accept async-commit and 1PC
    /// prewrites.
    pub fn is_synced(&self, region_id: RegionId, term: u64) -> bool {
        self.disabled || self.lock().synced.get(&region_id) == Some(&term)
    }

    /// Asks that command `cid` be woken when Region `region_id` is synchronised (or its
    /// leadership lost).
    pub fn wait(&self, region_id: RegionId, cid: u64) {
        self.lock().waiting.entry(region_id).or_default().push(cid);
    }

    /// Region `region_id`, led here at `term`, has raised `max_ts`.
    pub fn mark(&self, region_id: RegionId, term: u64) {
        let woken = {
            let mut inner = self.lock();
            inner.synced.insert(region_id, term);
            inner.waiting.remove(&region_id).unwrap_or_default()
        };
        woken.into_iter().for_each(|cid| self.wake.wake(cid));
    }

    /// Region `region_id` is no longer led here.
    pub fn forget(&self, region_id: RegionId) {
        let woken = {
            let mut inner = self.lock();
            inner.synced.remove(&region_id);
            inner.waiting.remove(&region_id).unwrap_or_default()
        };
        woken.into_iter().for_each(|cid| self.wake.wake(cid));
    }

    fn lock(&self) -> MutexGuard<'_, MaxTsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::Recorded;

    #[test]
    fn a_cycle_is_refused() {
        let waits = LockWaits::new(Arc::new(Recorded::default()));
        let a = waits.register(1, TimeStamp(1), TimeStamp(2), b"k2").unwrap();
        let b = waits.register(2, TimeStamp(2), TimeStamp(3), b"k3").unwrap();
        assert!(waits.register(3, TimeStamp(3), TimeStamp(1), b"k1").is_err(), "3 -> 1 -> 2 -> 3");
        assert_eq!(waits.deadlocks(), 1);
        drop(b);
        assert!(waits.register(3, TimeStamp(3), TimeStamp(1), b"k1").is_ok(), "the cycle is gone");
        drop(a);
    }

    #[test]
    fn a_transaction_waiting_twice_keeps_both_edges_until_each_ends() {
        let waits = LockWaits::new(Arc::new(Recorded::default()));
        // Transaction 1 waits for 2 in one Region and for 3 in another.
        let on_two = waits.register(1, TimeStamp(1), TimeStamp(2), b"a").unwrap();
        let on_three = waits.register(2, TimeStamp(1), TimeStamp(3), b"z").unwrap();
        assert!(waits.register(3, TimeStamp(2), TimeStamp(1), b"b").is_err(), "2 -> 1 -> 2");
        assert!(waits.register(4, TimeStamp(3), TimeStamp(1), b"c").is_err(), "3 -> 1 -> 3");
        drop(on_two);
        assert!(waits.is_waiting(TimeStamp(1)), "the other wait goes on");
        assert!(waits.register(5, TimeStamp(3), TimeStamp(1), b"c").is_err(), "3 -> 1 -> 3");
        let two_on_one = waits.register(6, TimeStamp(2), TimeStamp(1), b"b").unwrap();
        drop(on_three);
        assert!(!waits.is_waiting(TimeStamp(1)));
        drop(two_on_one);
    }

    #[test]
    fn a_woken_wait_is_no_edge_even_before_its_command_drops_it() {
        let waits = LockWaits::new(Arc::new(Recorded::default()));
        // 1 waits for 2's lock on k; 2 releases it, and 1 is woken.
        let woken = waits.register(1, TimeStamp(1), TimeStamp(2), b"k").unwrap();
        waits.wake(&[b"k".to_vec()]);
        // 2 now waits for 1 before 1's command ran again: no cycle.
        let two_on_one = waits.register(2, TimeStamp(2), TimeStamp(1), b"j");
        assert!(two_on_one.is_ok(), "a cycle through a wait already over");
        drop(woken);
        assert!(waits.is_waiting(TimeStamp(2)), "dropping the woken wait leaves the others");
    }

    #[test]
    fn a_release_wakes_the_keys_waiters_and_a_dropped_wait_is_forgotten() {
        let woken = Arc::new(Recorded::default());
        let waits = LockWaits::new(woken.clone());
        let first = waits.register(7, TimeStamp(1), TimeStamp(2), b"k").unwrap();
        let second = waits.register(8, TimeStamp(3), TimeStamp(2), b"k").unwrap();
        drop(second);
        assert!(waits.is_waiting(TimeStamp(1)));
        waits.wake(&[b"k".to_vec()]);
        assert_eq!(woken.take(), vec![7]);
        drop(first);
        assert!(!waits.is_waiting(TimeStamp(1)));
    }

    #[test]
    fn max_ts_waiters_are_woken_by_the_mark_or_the_loss() {
        let woken = Arc::new(Recorded::default());
        let sync = MaxTsSync::new(woken.clone(), false);
        sync.wait(5, 1);
        sync.wait(6, 2);
        assert!(!sync.is_synced(5, 3));
        sync.mark(5, 3);
        assert!(sync.is_synced(5, 3) && !sync.is_synced(5, 4));
        sync.forget(6);
        assert_eq!(woken.take(), vec![1, 2]);
    }
}
