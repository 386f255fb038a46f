//! Keeping the node's in-memory transactional state true on whichever replica leads.
//!
//! The lock index, the newest-record cache, `max_ts` and lock waits live in memory; a
//! Region's leadership can move to any replica. So:
//!
//! * [`ReplicaObserver`] applies to the lock index (and the cache) what every command
//!   this node did not propose does to the Lock and Latest column families, on the Raft
//!   thread, in log order with this node's own commands; a snapshot or a destroyed replica
//!   reloads the index for the Region's range and empties the cache. The indexes thus
//!   follow the data on every replica, and are exact the moment a replica leads.
//! * [`on_events`] reacts to leadership changes: a new leader takes a fresh timestamp into
//!   `max_ts` before it accepts async-commit and 1PC prewrites (reads served by the old
//!   leader used timestamps the oracle issued earlier, so below it), and waiters of locks
//!   are woken when leadership is lost so they answer `NotLeader` instead of waiting.

use crate::context::NodeContext;
use scandium_raftstore::{ApplyObserver, Event, RaftCommand, META_GROUP_ID};
use scandium_storage::EngineRef;
use scandium_txn::{IndexFollower, LockIndex, NewestCache};
use scandium_types::Region;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Follows other replicas' commands into this node's indexes (see the module docs).
pub struct ReplicaObserver {
    engine: EngineRef,
    follower: IndexFollower,
}

impl ReplicaObserver {
    /// An observer updating these indexes.
    pub fn new(engine: EngineRef, lock_index: Arc<LockIndex>, newest: Arc<NewestCache>) -> Self {
        ReplicaObserver { engine, follower: IndexFollower::new(lock_index, newest) }
    }
}

impl ApplyObserver for ReplicaObserver {
    fn on_applied(&mut self, _region: &Region, command: &RaftCommand) {
        if let Err(error) = self.follower.applied(command.data_writes()) {
            tracing::error!(%error, "undecodable lock applied");
        }
    }

    fn on_replaced(&mut self, region: &Region) {
        let snapshot = self.engine.snapshot();
        if let Err(error) = self.follower.replaced(&*snapshot, &region.start_key, &region.end_key) {
            tracing::error!(%error, region = region.id, "cannot reload the lock index");
        }
    }
}

/// Which Regions have synchronised `max_ts` since they last gained leadership, by term.
#[derive(Default)]
pub struct MaxTsSync {
    synced: Mutex<HashMap<u64, u64>>,
    changed: Notify,
}

impl MaxTsSync {
    /// Whether Region `region_id`, led here at `term`, may accept async-commit and 1PC
    /// prewrites.
    pub fn is_synced(&self, region_id: u64, term: u64) -> bool {
        self.synced.lock().unwrap_or_else(|e| e.into_inner()).get(&region_id) == Some(&term)
    }

    /// Waits up to `timeout` for [`MaxTsSync::is_synced`].
    pub async fn wait(&self, region_id: u64, term: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.is_synced(region_id, term) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.is_synced(region_id, term);
            }
        }
    }

    fn mark(&self, region_id: u64, term: u64) {
        self.synced.lock().unwrap_or_else(|e| e.into_inner()).insert(region_id, term);
        self.changed.notify_waiters();
    }

    fn forget(&self, region_id: u64) {
        self.synced.lock().unwrap_or_else(|e| e.into_inner()).remove(&region_id);
    }
}

/// Handles the Raft thread's events forever.
pub async fn on_events(node: Arc<NodeContext>, mut events: mpsc::UnboundedReceiver<Vec<Event>>) {
    while let Some(batch) = events.recv().await {
        let mut report = false;
        for event in batch {
            match event {
                Event::Role { region_id, is_leader: true, term } => {
                    report = true;
                    if region_id == META_GROUP_ID {
                        tracing::info!(
                            term,
                            "this node leads placement now (timestamps, scheduling, metadata)"
                        );
                        continue;
                    }
                    let node = node.clone();
                    let tasks = node.tasks.clone();
                    tasks.spawn(async move { sync_max_ts(&node, region_id, term).await });
                }
                Event::Role { region_id, is_leader: false, term } => {
                    if region_id == META_GROUP_ID {
                        tracing::info!(term, "this node no longer leads placement");
                    }
                    node.max_ts_sync.forget(region_id);
                    node.lock_waits.wake_all();
                }
                Event::RegionChanged(_) => report = true,
                Event::Destroyed(region_id) => node.max_ts_sync.forget(region_id),
            }
        }
        if report {
            node.heartbeat_now.notify_one();
        }
    }
}

/// Raises `max_ts` to a fresh timestamp for a Region that just gained leadership, then
/// lets it accept async-commit and 1PC prewrites.
async fn sync_max_ts(node: &NodeContext, region_id: u64, term: u64) {
    for attempt in 0u32.. {
        let still_leading = node
            .registry
            .get(region_id)
            .is_some_and(|s| s.term == term && s.peer.id == s.leader.as_ref().map_or(0, |l| l.id));
        if !still_leading && attempt > 0 {
            return;
        }
        match node.placement.timestamp(1).await {
            Ok(ts) => {
                node.concurrency.update_max_ts(ts);
                node.max_ts_sync.mark(region_id, term);
                return;
            }
            Err(error) => {
                tracing::debug!(region_id, %error, "cannot take a timestamp for max_ts yet");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
}
