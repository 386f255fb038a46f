//! Latches: per-key mutual exclusion for commands that read before they write.
//!
//! A command hashes each of its keys to one of a fixed number of slots and takes the slots
//! in ascending order (so two commands can never wait for each other in a cycle). It holds
//! them from before it reads its snapshot until its write has been applied, so no other
//! command on those keys can slip in between. Distinct keys may share a slot; that only
//! costs concurrency, never correctness.
//!
//! Sans-I/O, as TiKV's scheduler latches: each slot is a first-come, first-served queue of
//! command ids. [`Latches::acquire`] takes what it can and queues the command on the first
//! slot it cannot have; whoever releases that slot later wakes the command (through the
//! node's [`Wake`]), which then calls `acquire` again to go on from where it stopped. A
//! wake-up is a hint to look again, never a grant: a command that finds its slot still
//! taken simply waits once more.

use crate::wake::Wake;
use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

/// A fixed set of latch slots, shared by every command of a node.
#[derive(Clone)]
pub struct Latches {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each slot's queue: the front holds the slot, the others wait in order.
    slots: Vec<Mutex<VecDeque<u64>>>,
    wake: Arc<dyn Wake>,
    /// Deliberately broken (the simulator proves its checks catch it): nothing is ever
    /// held, so two commands may decide on the same state.
    disabled: bool,
}

/// The slots one command needs, and how many of them (in order) it holds.
#[derive(Debug)]
pub struct LatchLock {
    slots: Vec<usize>,
    owned: usize,
    cid: u64,
}

/// Slots held by one command; dropping it releases them and wakes the next waiter of each
/// (or takes the command out of the queue it waits in).
pub struct LatchGuard {
    latches: Latches,
    lock: LatchLock,
}

impl std::fmt::Debug for LatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatchGuard").field("lock", &self.lock).finish()
    }
}

impl Latches {
    /// `count` slots (at least 1); released slots wake their next waiter through `wake`.
    pub fn new(count: usize, wake: Arc<dyn Wake>) -> Latches {
        Latches::build(count, wake, false)
    }

    /// Latches that never hold anything: a deliberately broken node, for the simulator's
    /// proof that its checks see two commands deciding on the same state.
    pub fn disabled(wake: Arc<dyn Wake>) -> Latches {
        Latches::build(1, wake, true)
    }

    fn build(count: usize, wake: Arc<dyn Wake>, disabled: bool) -> Latches {
        let slots = (0..count.max(1)).map(|_| Mutex::new(VecDeque::new())).collect();
        Latches { inner: Arc::new(Inner { slots, wake, disabled }) }
    }

    /// What command `cid` must hold to work on `keys`.
    pub fn lock_for<K: AsRef<[u8]>>(
        &self,
        cid: u64,
        keys: impl IntoIterator<Item = K>,
    ) -> LatchLock {
        let mut slots: Vec<usize> = match self.inner.disabled {
            true => Vec::new(),
            false => keys.into_iter().map(|k| self.slot_of(k.as_ref())).collect(),
        };
        slots.sort_unstable();
        slots.dedup();
        LatchLock { slots, owned: 0, cid }
    }

    /// Takes the lock's slots in order, as far as it can. `Ok` with the guard once all are
    /// held; otherwise the command is queued on the next slot and the lock comes back, to
    /// be offered again when the command is woken.
    pub fn acquire(&self, mut lock: LatchLock) -> Result<LatchGuard, LatchLock> {
        while lock.owned < lock.slots.len() {
            let mut queue = self.slot(lock.slots[lock.owned]);
            if !queue.contains(&lock.cid) {
                queue.push_back(lock.cid);
            }
            if queue.front() != Some(&lock.cid) {
                return Err(lock);
            }
            drop(queue);
            lock.owned += 1;
        }
        Ok(LatchGuard { latches: self.clone(), lock })
    }

    /// Gives up a lock that is still waiting (its command was dropped): leaves the queue it
    /// waits in and releases what it holds.
    pub fn abandon(&self, lock: LatchLock) {
        self.release(&lock);
    }

    fn release(&self, lock: &LatchLock) {
        let end = (lock.owned + 1).min(lock.slots.len());
        let mut woken = Vec::new();
        for &index in &lock.slots[..end] {
            let mut queue = self.slot(index);
            let Some(position) = queue.iter().position(|&c| c == lock.cid) else { continue };
            queue.remove(position);
            if position == 0 {
                woken.extend(queue.front().copied());
            }
        }
        // Outside the slots' mutexes: a driver's wake may take locks of its own.
        for cid in woken {
            self.inner.wake.wake(cid);
        }
    }

    fn slot(&self, index: usize) -> MutexGuard<'_, VecDeque<u64>> {
        self.inner.slots[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot_of(&self, key: &[u8]) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % self.inner.slots.len() as u64) as usize
    }
}

impl Drop for LatchGuard {
    fn drop(&mut self) {
        self.latches.release(&self.lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::Recorded;

    fn latches(slots: usize) -> (Latches, Arc<Recorded>) {
        let woken = Arc::new(Recorded::default());
        (Latches::new(slots, woken.clone()), woken)
    }

    #[test]
    fn same_key_waits_distinct_keys_do_not() {
        let (latches, woken) = latches(1 << 12);
        // "a" and "zz" could share a slot by chance; these do not.
        assert_ne!(latches.slot_of(b"a"), latches.slot_of(b"zz"));
        let held = latches.acquire(latches.lock_for(1, [b"a"])).unwrap();
        let other = latches.acquire(latches.lock_for(2, [b"zz"]));
        assert!(other.is_ok(), "a different key is not blocked");
        let waiting = latches.acquire(latches.lock_for(3, [b"a"])).unwrap_err();
        assert!(woken.take().is_empty());
        drop(held);
        assert_eq!(woken.take(), vec![3], "the release wakes the next in line");
        assert!(latches.acquire(waiting).is_ok(), "and it holds the slot now");
    }

    #[test]
    fn a_waiter_that_gives_up_passes_its_turn_on() {
        let (latches, woken) = latches(64);
        let first = latches.acquire(latches.lock_for(1, [b"k"])).unwrap();
        let second = latches.acquire(latches.lock_for(2, [b"k"])).unwrap_err();
        let third = latches.acquire(latches.lock_for(3, [b"k"])).unwrap_err();
        latches.abandon(second);
        assert!(woken.take().is_empty(), "the holder still holds");
        drop(first);
        assert_eq!(woken.take(), vec![3]);
        assert!(latches.acquire(third).is_ok());
    }

    #[test]
    fn a_woken_command_that_is_dropped_wakes_the_next() {
        let (latches, woken) = latches(64);
        let first = latches.acquire(latches.lock_for(1, [b"k"])).unwrap();
        let second = latches.acquire(latches.lock_for(2, [b"k"])).unwrap_err();
        let _third = latches.acquire(latches.lock_for(3, [b"k"])).unwrap_err();
        drop(first);
        // Woken and at the front, but gone before it looked again.
        latches.abandon(second);
        assert_eq!(woken.take(), vec![2, 3]);
    }

    #[test]
    fn overlapping_multi_key_commands_all_finish() {
        // Commands over overlapping key sets, run in turns: every one eventually holds
        // all its slots (ascending order rules out a cycle of waits).
        let (latches, woken) = latches(8);
        let mut waiting: Vec<Option<LatchLock>> = Vec::new();
        let mut held = Vec::new();
        for i in 0..32u8 {
            let keys = [vec![i % 5], vec![(i + 1) % 5], vec![(i + 3) % 7]];
            match latches.acquire(latches.lock_for(u64::from(i), keys.iter())) {
                Ok(guard) => held.push(guard),
                Err(lock) => waiting.push(Some(lock)),
            }
        }
        let mut finished = held.len();
        while let Some(guard) = held.pop() {
            drop(guard);
            let woken: Vec<u64> = std::mem::take(&mut woken.take());
            for cid in woken {
                let slot = waiting.iter_mut().find(|l| l.as_ref().is_some_and(|l| l.cid == cid));
                let lock = slot.and_then(Option::take).expect("only waiters are woken");
                match latches.acquire(lock) {
                    Ok(guard) => {
                        finished += 1;
                        held.push(guard);
                    }
                    Err(lock) => waiting.push(Some(lock)),
                }
            }
        }
        assert_eq!(finished, 32, "every command got its latches");
    }
}
