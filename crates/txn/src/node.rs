//! [`TxnNode`]: one node's transactional state, which every command reads and keeps.
//!
//! Everything here is memory that follows the log (DESIGN.md, decision 7): the lock index
//! and the newest-record cache are kept on every replica by the commands this node runs
//! and by [`IndexFollower`](crate::IndexFollower) for everyone else's; `max_ts`, latches and
//! waits belong to the running process and start empty.

use crate::latches::Latches;
use crate::waits::{LockWaits, MaxTsSync};
use crate::wake::Wake;
use crate::{ConcurrencyManager, LockIndex, NewestCache};
use scandium_storage::EngineRef;
use scandium_types::{RegionId, TimeStamp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a node's commands are bounded and laid out.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Latch slots (keys hash onto them).
    pub latch_slots: usize,
    /// Largest answer a read may build, in bytes.
    pub max_response_bytes: usize,
    /// Largest limit a raw scan may ask for.
    pub max_scan_limit: u32,
    /// Deliberate breakages, for the simulator only.
    pub breakages: Breakages,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            latch_slots: 1 << 12,
            max_response_bytes: 4 << 20,
            max_scan_limit: 10_240,
            breakages: Breakages::default(),
        }
    }
}

/// Deliberately broken behaviour, each of which the simulator's checks must catch (so a
/// passing sweep means they would see the real thing). Always off in a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakages {
    /// Commands take no latches: two of them may decide on the same state.
    pub unsafe_latches: bool,
    /// A new leader serves async-commit and 1PC prewrites without raising `max_ts` to a
    /// fresh timestamp first.
    pub unsafe_max_ts: bool,
    /// A compare-and-swap compares against the node's state without a lease or ReadIndex
    /// (as the server did until 2026-12-03).
    pub unsafe_cas: bool,
}

/// One node's transactional state (see the module docs).
pub struct TxnNode {
    /// The node's storage.
    pub engine: EngineRef,
    /// Serialises commands on the same keys.
    pub latches: Latches,
    /// The highest read timestamp and in-flight async-commit locks.
    pub concurrency: Arc<ConcurrencyManager>,
    /// Which keys hold transactional locks.
    pub lock_index: Arc<LockIndex>,
    /// Recently written keys' newest records.
    pub newest: Arc<NewestCache>,
    /// Pessimistic lock requests waiting for other transactions' locks.
    pub lock_waits: LockWaits,
    /// Regions whose `max_ts` is synchronised since they gained leadership here.
    pub max_ts: MaxTsSync,
    settings: NodeSettings,
    resolved_locks: AtomicU64,
    next_cid: AtomicU64,
}

impl TxnNode {
    /// The state of a node starting on `engine`, with its lock index (loaded from the
    /// engine before anything is applied) and cache; waits end through `wake`.
    pub fn new(
        engine: EngineRef,
        lock_index: Arc<LockIndex>,
        newest: Arc<NewestCache>,
        settings: NodeSettings,
        wake: Arc<dyn Wake>,
    ) -> TxnNode {
        let breakages = settings.breakages;
        let latches = match breakages.unsafe_latches {
            true => Latches::disabled(wake.clone()),
            false => Latches::new(settings.latch_slots, wake.clone()),
        };
        TxnNode {
            engine,
            latches,
            concurrency: Arc::new(ConcurrencyManager::new(TimeStamp::ZERO)),
            lock_index,
            newest,
            lock_waits: LockWaits::new(wake.clone()),
            max_ts: MaxTsSync::new(wake, breakages.unsafe_max_ts),
            settings,
            resolved_locks: AtomicU64::new(0),
            next_cid: AtomicU64::new(1),
        }
    }

    /// The node's settings.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// Locks resolved (committed or rolled back by lock resolution) since the node started.
    pub fn resolved_locks(&self) -> u64 {
        self.resolved_locks.load(Ordering::Relaxed)
    }

    pub(crate) fn count_resolved(&self, locks: u64) {
        self.resolved_locks.fetch_add(locks, Ordering::Relaxed);
    }

    pub(crate) fn next_cid(&self) -> u64 {
        self.next_cid.fetch_add(1, Ordering::Relaxed)
    }

    /// Region `region_id`, led here at `term`, took `ts` from the oracle since it gained
    /// leadership: reads served by earlier leaders are below it, so async commit and 1PC
    /// may choose commit timestamps from `max_ts` now.
    pub fn max_ts_synced(&self, region_id: RegionId, term: u64, ts: TimeStamp) {
        self.concurrency.update_max_ts(ts);
        self.max_ts.mark(region_id, term);
    }

    /// This node no longer leads Region `region_id` (or its replica here is gone): it must
    /// synchronise `max_ts` again before async commit, and lock waiters look again (they
    /// answer `NotLeader` rather than wait for a release that will not come here).
    pub fn leadership_lost(&self, region_id: RegionId) {
        self.max_ts.forget(region_id);
        self.lock_waits.wake_all();
    }
}
