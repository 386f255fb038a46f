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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
                    node.txn.leadership_lost(region_id);
                }
                Event::RegionChanged(_) => report = true,
                Event::Destroyed(region_id) => node.txn.max_ts.forget(region_id),
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
                node.txn.max_ts_synced(region_id, term, ts);
                return;
            }
            Err(error) => {
                tracing::debug!(region_id, %error, "cannot take a timestamp for max_ts yet");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
}
