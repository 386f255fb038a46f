//! A fault-injecting engine, for the simulator and for tests of crash recovery.
//!
//! It keeps two copies of the data: what readers see (everything written) and what a
//! power loss would leave (everything synced). Batches written since the last
//! [`Engine::sync`] are kept apart, in order, so that [`FaultEngine::crash`] can drop all of
//! them or keep only a prefix, ending at a batch boundary: a write batch is atomic in the
//! journal of the real engine, so a crash never tears one.
//!
//! Faults are set by the test: the next syncs or writes fail, or the disk is full. A
//! failed sync poisons the engine as fjall does after a failed fsync (the kernel may have
//! dropped the dirty pages, so no later sync can prove anything): every later write and
//! sync fails, reads go on. A full disk refuses writes with a clear error and keeps
//! serving reads; it clears when the test frees space.

use crate::memory::MemoryEngine;
use crate::{Cf, Engine, Result, Snapshot, StorageError, WriteBatch};
use std::sync::{Arc, Mutex, MutexGuard};

/// [`Engine`] over memory that loses unsynced writes on a simulated crash and fails on
/// demand. Clones share the same disk.
#[derive(Clone, Default)]
pub struct FaultEngine {
    state: Arc<Mutex<FaultState>>,
}

#[derive(Default)]
struct FaultState {
    /// Everything written: what reads see.
    live: MemoryEngine,
    /// Everything synced: what survives a crash.
    durable: MemoryEngine,
    /// Batches written since the last successful sync, oldest first.
    unsynced: Vec<WriteBatch>,
    faults: Faults,
    /// A sync failed: the engine refuses every write and sync from then on.
    poisoned: bool,
    syncs: u64,
}

/// The faults an engine is set to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// This many of the next syncs fail (and poison the engine).
    pub fail_syncs: u32,
    /// This many of the next writes fail with an I/O error, leaving nothing written.
    pub fail_writes: u32,
    /// Writes are refused for want of space until this is cleared.
    pub disk_full: bool,
}

impl FaultEngine {
    /// An empty engine with no fault set.
    pub fn new() -> FaultEngine {
        FaultEngine::default()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the faults to produce from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The faults still to be produced.
    pub fn faults(&self) -> Faults {
        self.lock().faults
    }

    /// Whether a sync has failed, after which the engine refuses every write and sync.
    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    /// Batches written since the last sync: what a crash may lose.
    pub fn unsynced_batches(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Successful syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The disk as a node restarted after a crash finds it: everything synced, then the
    /// first `kept_unsynced` of the batches written since (clamped to how many there are).
    /// This engine is left as it was; the returned one is a new disk with no fault set, as
    /// after replacing a failed one.
    pub fn crash(&self, kept_unsynced: usize) -> FaultEngine {
        let state = self.lock();
        let disk = state.durable.deep_copy();
        for batch in state.unsynced.iter().take(kept_unsynced) {
            disk.write(batch.clone()).expect("memory engines accept any batch already accepted");
        }
        FaultEngine {
            state: Arc::new(Mutex::new(FaultState {
                live: disk.deep_copy(),
                durable: disk,
                ..FaultState::default()
            })),
        }
    }
}

impl Engine for FaultEngine {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut state = self.lock();
        if state.poisoned {
            return Err(StorageError::Injected("engine poisoned by a failed sync"));
        }
        if state.faults.disk_full {
            return Err(StorageError::Injected("no space left on device"));
        }
        if state.faults.fail_writes > 0 {
            state.faults.fail_writes -= 1;
            return Err(StorageError::Injected("write failed"));
        }
        state.live.write(batch.clone())?;
        state.unsynced.push(batch);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut state = self.lock();
        if state.poisoned {
            return Err(StorageError::Injected("engine poisoned by a failed sync"));
        }
        if state.faults.fail_syncs > 0 {
            state.faults.fail_syncs -= 1;
            state.poisoned = true;
            return Err(StorageError::Injected("fsync failed"));
        }
        let FaultState { durable, unsynced, .. } = &mut *state;
        for batch in unsynced.drain(..) {
            durable.write(batch)?;
        }
        state.syncs += 1;
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.lock().live.get(cf, key)
    }

    fn snapshot(&self) -> Box<dyn Snapshot> {
        self.lock().live.snapshot()
    }

    fn disk_size(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(engine: &FaultEngine, key: &str) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Raw, key.as_bytes(), b"v".to_vec());
        batch.put(Cf::RaftState, format!("applied-{key}").into_bytes(), b"1".to_vec());
        engine.write(batch)
    }

    fn has(engine: &FaultEngine, key: &str) -> bool {
        engine.get(Cf::Raw, key.as_bytes()).unwrap().is_some()
    }

    #[test]
    fn a_crash_loses_what_was_not_synced() {
        let engine = FaultEngine::new();
        put(&engine, "a").unwrap();
        engine.sync().unwrap();
        put(&engine, "b").unwrap();
        assert!(has(&engine, "b"), "unsynced writes are visible before the crash");
        assert_eq!(engine.unsynced_batches(), 1);
        let after = engine.crash(0);
        assert!(has(&after, "a"));
        assert!(!has(&after, "b"));
        assert_eq!(after.unsynced_batches(), 0);
    }

    #[test]
    fn a_crash_keeps_a_prefix_of_whole_batches() {
        let engine = FaultEngine::new();
        for key in ["a", "b", "c"] {
            put(&engine, key).unwrap();
        }
        let after = engine.crash(2);
        assert!(has(&after, "a") && has(&after, "b") && !has(&after, "c"));
        // Both halves of the kept batches are there: batches are never torn.
        assert!(after.get(Cf::RaftState, b"applied-b").unwrap().is_some());
        assert!(after.get(Cf::RaftState, b"applied-c").unwrap().is_none());
        assert!(has(&engine.crash(10), "c"), "a prefix longer than the tail keeps it all");
    }

    #[test]
    fn the_crashed_disk_is_independent_of_the_old_one() {
        let engine = FaultEngine::new();
        put(&engine, "a").unwrap();
        let after = engine.crash(1);
        put(&after, "b").unwrap();
        assert!(!has(&engine, "b"));
        put(&engine, "c").unwrap();
        assert!(!has(&after, "c"));
    }

    #[test]
    fn a_failed_sync_poisons_the_engine_but_reads_go_on() {
        let engine = FaultEngine::new();
        put(&engine, "a").unwrap();
        engine.set_faults(Faults { fail_syncs: 1, ..Faults::default() });
        assert!(matches!(engine.sync(), Err(StorageError::Injected(_))));
        assert!(engine.is_poisoned());
        assert!(put(&engine, "b").is_err(), "no write after a failed fsync");
        assert!(engine.sync().is_err(), "no later sync can succeed");
        assert!(has(&engine, "a"), "reads go on");
        assert!(!has(&engine.crash(0), "a"), "what the failed sync covered is not durable");
    }

    #[test]
    fn a_full_disk_refuses_writes_until_space_is_freed() {
        let engine = FaultEngine::new();
        engine.set_faults(Faults { disk_full: true, ..Faults::default() });
        let error = put(&engine, "a").unwrap_err();
        assert!(error.to_string().contains("no space left"), "{error}");
        assert!(!has(&engine, "a"), "a refused batch leaves nothing behind");
        engine.sync().unwrap();
        engine.set_faults(Faults::default());
        put(&engine, "a").unwrap();
        assert!(has(&engine, "a"));
    }

    #[test]
    fn failed_writes_are_counted_down() {
        let engine = FaultEngine::new();
        engine.set_faults(Faults { fail_writes: 2, ..Faults::default() });
        assert!(put(&engine, "a").is_err());
        assert!(put(&engine, "a").is_err());
        put(&engine, "a").unwrap();
        assert_eq!(engine.faults(), Faults::default());
    }

    #[test]
    fn snapshots_see_unsynced_writes_and_do_not_move() {
        let engine = FaultEngine::new();
        put(&engine, "a").unwrap();
        let snapshot = engine.snapshot();
        put(&engine, "b").unwrap();
        assert!(snapshot.get(Cf::Raw, b"a").unwrap().is_some());
        assert!(snapshot.get(Cf::Raw, b"b").unwrap().is_none());
    }
}
