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
//! * [`Replicas`] reacts to leadership changes: a new leader takes a fresh timestamp into
//!   `max_ts` before it accepts async-commit and 1PC prewrites (reads served by the old
//!   leader used timestamps the oracle issued earlier, so below it), and waiters of locks
//!   are woken when leadership is lost so they answer `NotLeader` instead of waiting.

use crate::placement::Placement;
use crate::tasks::Tasks;
use scandium_raftstore::{ApplyObserver, Event, RaftCommand, Registry, META_GROUP_ID};
use scandium_storage::EngineRef;
use scandium_txn::{IndexFollower, TxnNode};
use scandium_types::Region;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Follows other replicas' commands into this node's indexes (see the module docs).
pub struct ReplicaObserver {
    engine: EngineRef,
    follower: IndexFollower,
    txn: Arc<TxnNode>,
}

impl ReplicaObserver {
    /// An observer updating `txn`'s indexes.
    pub fn new(engine: EngineRef, txn: Arc<TxnNode>) -> Self {
        let follower = IndexFollower::new(txn.lock_index.clone(), txn.newest.clone());
        ReplicaObserver { engine, follower, txn }
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

    fn on_merged(&mut self, region: &Region) {
        // Reads of the source were served on another node: no async-commit or 1PC
        // prewrite takes the union's keys until `max_ts` is raised again (on
        // `Event::Merged`). Here, before the union is published: a prewrite carrying its
        // new epoch could otherwise come before that event is handled.
        self.txn.max_ts.forget(region.id);
    }
}

/// What reacting to the Raft thread's events touches.
pub struct Replicas {
    /// The node's transactional state (`max_ts`, lock waits).
    pub txn: Arc<TxnNode>,
    /// Regions with a replica here.
    pub registry: Registry,
    /// The placement group, for fresh timestamps.
    pub placement: Arc<Placement>,
    /// Where `max_ts` synchronisations run.
    pub tasks: Tasks,
    /// Notified when a heartbeat should go now (leadership or a Region changed here).
    pub beat_now: Arc<Notify>,
}

impl Replicas {
    /// Handles the Raft thread's events forever.
    pub async fn run(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<Vec<Event>>) {
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
                        let replicas = self.clone();
                        self.tasks
                            .spawn(async move { replicas.sync_max_ts(region_id, term).await });
                    }
                    Event::Role { region_id, is_leader: false, term } => {
                        if region_id == META_GROUP_ID {
                            tracing::info!(term, "this node no longer leads placement");
                        }
                        self.txn.leadership_lost(region_id);
                    }
                    Event::RegionChanged(_) => report = true,
                    Event::Store(transition) => {
                        tracing::info!(?transition, "another store's liveness changed")
                    }
                    Event::Destroyed(region_id) => self.txn.max_ts.forget(region_id),
                    Event::Merged { target, source, is_leader, term } => {
                        tracing::info!(target, source, "a Region absorbed its neighbour");
                        report = true;
                        if is_leader {
                            crate::metrics::METRICS.region_merges.inc();
                            // Reads of the source were served elsewhere: `max_ts` is raised
                            // again before async commit takes the union's keys.
                            self.txn.max_ts.forget(target);
                            let replicas = self.clone();
                            self.tasks
                                .spawn(async move { replicas.sync_max_ts(target, term).await });
                        }
                    }
                }
            }
            if report {
                self.beat_now.notify_one();
            }
        }
    }

    /// Raises `max_ts` to a fresh timestamp for a Region that just gained leadership, then
    /// lets it accept async-commit and 1PC prewrites.
    async fn sync_max_ts(&self, region_id: u64, term: u64) {
        for attempt in 0u32.. {
            let still_leading = self.registry.get(region_id).is_some_and(|s| {
                s.term == term && s.peer.id == s.leader.as_ref().map_or(0, |l| l.id)
            });
            if !still_leading && attempt > 0 {
                return;
            }
            match self.placement.timestamp(1).await {
                Ok(ts) => {
                    self.txn.max_ts_synced(region_id, term, ts);
                    return;
                }
                Err(error) => {
                    tracing::debug!(region_id, %error, "cannot take a timestamp for max_ts yet");
                    let backoff = 50 * u64::from(attempt.min(20));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }
}
