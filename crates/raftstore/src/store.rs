//! [`Store`]: every Raft group replica on this node, driven in rounds.
//!
//! A round ([`Store::handle_ready`]) collects the `Ready` of every group that has one,
//! writes all their new log entries, hard states and received snapshots in one batch with
//! one fsync (group commit), then applies every newly committed entry in a second batch
//! that also carries each group's apply state, and finally answers the proposers. Messages
//! for replicas on other stores come out of the round for the server's transport to carry:
//! a leader's before its fsync, the others' right after it (raft-rs's rule), so followers
//! persist in parallel with their leader.
//!
//! Messages from other stores come in through [`Store::step`], which also creates the
//! replica a leader is writing to if this store has none yet, and destroys replicas that
//! were removed from their Region.
//!
//! The store is synchronous and owns no thread or clock: the server calls its methods from
//! its Raft thread and passes the time in ([`Store::tick`]).

use crate::apply::{apply_command, Applied};
use crate::bootstrap::{
    write_absorbed_tombstone, write_lingering, write_merging_state, write_split_group,
};
use crate::command::{EncodedCommand, RaftCommand};
use crate::conf_change::{self, PeerChange};
use crate::error::RaftstoreError;
use crate::hibernate::Hibernate;
use crate::keys;
use crate::linger::Lingering;
use crate::liveness::{StoreLiveness, Transition};
use crate::logger::raft_logger;
use crate::merge::{self, MergeState};
use crate::message::PeerMessage;
use crate::peer::{Peer, RaftConfig, ReadCallback, Sleep};
use crate::registry::{GroupStatus, RegionStatus, Registry};
use crate::snapshot::{
    self, Install, PendingInstall, SnapshotData, SnapshotHeader, SnapshotSources, Stager,
};
use crate::state::{ConfStateRecord, PeerState, RegionLocalState};
use crate::stats::RegionStats;
use crate::storage::{PeerStorage, StorageContext};
use crate::{ApplyObserver, ApplyOutput, Callback, MetaStateMachine, NoObserver, META_GROUP_ID};
use prost::Message as _;
use raft::prelude::{Entry, EntryType, Message, MessageType};
use raft::{ProgressState, SnapshotStatus, StateRole};
use scandium_storage::{Cf, EngineRef, WriteBatch};
use scandium_types::{Region, RegionEpoch, StoreId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Longest chain of merges [`Store::may_absorb`] follows (each absorbed by the next).
const MAX_CASCADE: usize = 16;

/// Something the server should react to, produced by a round.
#[derive(Clone, Debug)]
pub enum Event {
    /// The local replica became leader of a group, or stopped being its leader.
    Role {
        /// The group.
        region_id: u64,
        /// Whether the local replica now leads.
        is_leader: bool,
        /// Its term.
        term: u64,
    },
    /// Another store's liveness changed (see [`crate::liveness`]).
    Store(Transition),
    /// A group's Region changed shape (membership, split, snapshot) on this replica.
    RegionChanged(Region),
    /// The local replica of a group serves no more: destroyed, or removed and lingering
    /// (see [`crate::linger`]), once either way.
    Destroyed(u64),
    /// The local replica of `target` absorbed its neighbour `source` (see
    /// [`crate::merge`]). If it leads (in `term`), requests the source's leader served
    /// were not seen here: the transaction layer raises `max_ts` again before it takes
    /// async-commit or one-phase prewrites, as after gaining leadership.
    Merged {
        /// The Region that grew.
        target: u64,
        /// The Region it absorbed.
        source: u64,
        /// Whether the local replica of the target leads.
        is_leader: bool,
        /// Its term.
        term: u64,
    },
}

/// What a round produced for the server to act on.
#[derive(Default)]
pub struct RoundOutput {
    /// Raft messages for replicas on other stores.
    pub messages: Vec<PeerMessage>,
    /// Role and Region changes.
    pub events: Vec<Event>,
    /// How long the round's steps took, for metrics (`None`: the step had nothing to do).
    pub timings: RoundTimings,
    /// How many groups the round looked at: those marked as maybe having work, not
    /// every replica (for tests of what a round costs).
    pub visited: usize,
}

/// The time of each step of a round that had work.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundTimings {
    /// Writing every group's new entries and hard state (one batch).
    pub append: Option<std::time::Duration>,
    /// The fsync that makes them durable.
    pub sync: Option<std::time::Duration>,
    /// Applying the committed entries of every group (one batch, written, not synced).
    pub apply: Option<std::time::Duration>,
}

/// Why an incoming message was not delivered. Each is counted by the server; none is an
/// error of this node.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Addressed to another store.
    #[error("message for store {0}")]
    WrongStore(u64),
    /// Addressed to a replica that was replaced or destroyed here.
    #[error("message for a stale replica")]
    StaleReplica,
    /// For a group this store has no replica of, and not one that creates it.
    #[error("message for an unknown group")]
    UnknownGroup,
    /// A snapshot this replica cannot take (overlapping another Region here, older than
    /// what it holds, or without its data).
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
    /// For a replica still writing a snapshot's data: it takes nothing until done (its
    /// leader sends again, as after a lost message).
    #[error("the replica is installing a snapshot")]
    Installing,
}

/// Bytes of a snapshot's data written in one step of its install (one step a round), so
/// that installing a large Region holds up the other Regions' rounds only briefly.
const INSTALL_STEP_BYTES: usize = 1 << 20;

/// Memtable bytes past which an install waits for the engine's flushes: its steps come
/// faster than one background worker flushes them, and unthrottled a 1 GiB install held
/// 240 to 730 MiB of memtables (`scripts/snapshot-move.sh`). With 64 MiB here the
/// receiver peaked 236 MiB over its start, with 16 MiB 132 MiB, at the same rate (54
/// MiB/s, 2026-12-06). One full memtable's worth: as the other column families' memtables
/// below their own limit would hold the total above it for as long as they are not
/// flushed, the waiting install asks for a flush ([`INSTALL_FLUSH_EVERY_MS`]).
const INSTALL_MAX_WRITE_BUFFER: u64 = 16 << 20;

/// How long an install waits, at least, once the memtables are past that.
const INSTALL_PAUSE_MS: u64 = 10;

/// How often, at most, a waiting install asks the engine to flush every memtable.
const INSTALL_FLUSH_EVERY_MS: u64 = 100;

/// Every Raft group replica on one node.
pub struct Store {
    store_id: StoreId,
    engine: EngineRef,
    config: RaftConfig,
    logger: slog::Logger,
    /// By group id, in order: rounds visit groups in this order, so that the batches
    /// written and the messages sent are the same from one run to the next (the simulator
    /// depends on it).
    peers: BTreeMap<u64, Box<Peer>>,
    /// Destroyed replicas: group id to the replica's id.
    tombstones: BTreeMap<u64, u64>,
    /// Destroyed replicas whose Region was absorbed by a merge: group id to the target's.
    absorbed_into: BTreeMap<u64, u64>,
    meta: Box<dyn MetaStateMachine>,
    observer: Box<dyn ApplyObserver>,
    registry: Registry,
    storage: StorageContext,
    stager: Stager,
    /// Installs wait until the store's clock reaches this (memtables to flush first).
    install_paused_until_ms: u64,
    /// When a waiting install may next ask the engine to flush its memtables.
    install_flush_after_ms: u64,
    /// Groups whose replica is installing a snapshot's data, so that rounds need not look
    /// through every replica for them.
    installing: BTreeSet<u64>,
    /// Groups that may have Raft work: a `Ready`, or reads to batch. Every change to a
    /// replica from outside a round marks it, and a round leaves marked those it did not
    /// finish with, so that a round, and the question whether one is due, cost what is
    /// active rather than every replica here. A group marked without work costs one look.
    dirty: BTreeSet<u64>,
    /// Groups whose replica here ticks: all but the hibernating ones (a leader asking
    /// to sleep counts its ticks). Ticks, publications and stale checks look only at
    /// these, so ten thousand sleeping groups cost nothing per tick.
    ticking: BTreeSet<u64>,
    /// Which of the stores holding replicas of this store's groups are heard.
    liveness: StoreLiveness,
    /// The stores this one beats: every store with a replica of one of its groups, or
    /// that a replica here heard from. Stores are added as they appear (a replica started,
    /// a configuration applied, a message heard); they are taken out only by a recount.
    beat_targets: BTreeSet<u64>,
    /// Whether a store may have stopped holding replicas of this store's groups (a
    /// replica here went, or a configuration changed) since the last recount: only then
    /// does the next recount look at every replica, so that a store at rest costs nothing
    /// for it.
    beat_targets_stale: bool,
    /// Groups whose leader here went to sleep, since the store started.
    slept: u64,
    /// Requests to sleep sent by leaders here, each round numbered by it (see
    /// [`Hibernate::Request`]).
    sleep_rounds: u64,
    /// Regions whose replica here is frozen to merge into a neighbour (see
    /// [`crate::merge`]): each looks at its target every [`merge::MERGE_CHECK_TICKS`].
    merging: BTreeSet<u64>,
    /// This store's looks at the commit of each frozen source.
    merge_looks: BTreeMap<u64, MergeLook>,
    /// Targets whose apply waits at a commit of a merge for their source replica here.
    merge_waiting: BTreeSet<u64>,
    /// Targets to look at again in the next round (taken from `merge_waiting` each tick).
    merge_retry: BTreeSet<u64>,
    now_ms: u64,
    ticks: u64,
    /// Until when a replica of this incarnation refuses votes (an election timeout from
    /// the first clock reading; `u64::MAX` before it): one restarted may have heard from
    /// a leader just before it went down, and helped it to a lease (see `set_time`). So
    /// does a replica with no data that a message creates again after the restart (its
    /// term was persisted): it answered heartbeats too, which count for a lease.
    votes_refused_until_ms: u64,
    /// Messages produced outside rounds (answers to stale replicas).
    outbox: Vec<PeerMessage>,
    events: Vec<Event>,
}

type PendingReply = (Callback, Result<ApplyOutput, RaftstoreError>);

/// What runs after an apply batch is written, in log order.
enum PostApply {
    Reply(PendingReply),
    Observe(Region, RaftCommand),
    /// A target absorbed its neighbour: the observer hears it before the union is
    /// published.
    Merged(Region),
}

/// Entries a follower may be behind the commit index and still count as caught up.
const PENDING_LAG: u64 = 64;

/// Longest election timeouts without word from a leader before a replica asks the members
/// of its configuration whether it still is one.
const STALE_CHECK_ELECTIONS: usize = 5;

/// Entries a follower may be behind the leader's log and still be handed leadership.
const TRANSFER_MAX_LAG: u64 = 128;

/// Ticks between publications of every replica's status (lease, lagging peers, whether
/// the leader is heard).
const PUBLISH_EVERY_TICKS: u64 = 5;

/// Least ticks between recounts of the stores to beat (one look at every replica here),
/// made only after a replica went or a configuration changed; stores that appear are added
/// at once.
const BEAT_TARGETS_EVERY_TICKS: u64 = 20;

impl Store {
    /// Loads every group with a replica on `store_id` from the engine and starts it.
    /// Groups with a single voter elect themselves at once.
    pub fn open(
        store_id: StoreId,
        engine: EngineRef,
        config: RaftConfig,
        meta: Box<dyn MetaStateMachine>,
        registry: Registry,
    ) -> Result<Store, RaftstoreError> {
        let storage = StorageContext {
            engine: engine.clone(),
            snapshots: SnapshotSources::default(),
            clock: Arc::new(AtomicU64::new(0)),
        };
        let snapshot = engine.snapshot();
        let installs = pending_installs(&*snapshot)?;
        let keep: Vec<u64> = installs.values().map(|p| p.staging_id).collect();
        let stager = Stager::open(engine.clone(), config.snapshot_dir.as_deref(), &keep)?
            .ingest_inline(config.ingest_inline);
        let liveness = StoreLiveness::new(config.heartbeat_ticks, config.election_ticks);
        let mut store = Store {
            store_id,
            engine,
            config,
            logger: raft_logger(),
            peers: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            absorbed_into: BTreeMap::new(),
            meta,
            observer: Box::new(NoObserver),
            registry,
            storage,
            stager,
            install_paused_until_ms: 0,
            install_flush_after_ms: 0,
            installing: Default::default(),
            dirty: BTreeSet::new(),
            ticking: BTreeSet::new(),
            liveness,
            beat_targets: BTreeSet::new(),
            beat_targets_stale: false,
            slept: 0,
            sleep_rounds: 0,
            merging: BTreeSet::new(),
            merge_looks: BTreeMap::new(),
            merge_waiting: BTreeSet::new(),
            merge_retry: BTreeSet::new(),
            now_ms: 0,
            ticks: 0,
            votes_refused_until_ms: u64::MAX,
            outbox: Vec::new(),
            events: Vec::new(),
        };
        let prefix = [keys::REGION_STATE_PREFIX];
        let end = [keys::REGION_STATE_PREFIX + 1];
        for item in snapshot.scan(Cf::RaftState, &prefix, &end, false) {
            let (key, value) = item?;
            let Some(group_id) = keys::decode_region_state_key(&key) else { continue };
            let state = RegionLocalState::decode(value.as_slice()).map_err(|e| {
                scandium_storage::StorageError::Corrupted {
                    cf: Cf::RaftState,
                    reason: e.to_string(),
                }
            })?;
            if state.state == PeerState::Tombstone as i32 {
                store.tombstones.insert(group_id, state.removed_peer_id);
                if let Some(merge) = &state.merge_state {
                    store.absorbed_into.insert(group_id, merge.target_id());
                }
                continue;
            }
            if state.state == PeerState::Lingering as i32 {
                store.restart_lingering(state)?;
                continue;
            }
            let conf_state = state.conf_state();
            let merge_state = state.merge_state;
            let region = state.region.unwrap_or_default();
            debug_assert_eq!(region.id, group_id);
            if let Some(peer) = store.start_peer(region, &conf_state, false)? {
                peer.raw.mut_store().set_frozen(merge_state.is_some());
                peer.merging = merge_state.map(Box::new);
                peer.raw.mut_store().set_absorbed(state.absorbed);
                // A restarted replica may have heard from a leader just before it went
                // down; it must not help elect another one until that leader's lease has
                // surely run out (the deadline is set by the first clock reading).
                peer.votes_refused_until_ms = u64::MAX;
                if let Some(pending) = installs.get(&group_id) {
                    tracing::info!(group = group_id, "installing a snapshot's data again");
                    peer.installing = Some(Box::new(Install::new(pending.clone())));
                    store.installing.insert(group_id);
                }
            }
        }
        let frozen = store.peers.iter().filter(|(_, p)| p.merging.is_some());
        store.merging = frozen.map(|(id, _)| *id).collect();
        store.clear_lingering_data()?;
        for id in store.peers.keys().copied().collect::<Vec<_>>() {
            store.publish(id);
        }
        Ok(store)
    }

    /// Clears the data of lingering replicas (at open): the record of one goes with the
    /// batch that applies its removal, and `linger` clears the data only after it, so a
    /// crash in between left it. Not where another replica here owns the range since.
    fn clear_lingering_data(&mut self) -> Result<(), RaftstoreError> {
        let mut batch = WriteBatch::new();
        let engine_snapshot = self.engine.snapshot();
        for peer in self.peers.values().filter(|p| p.lingering.is_some()) {
            let owned = self.peers.values().any(|other| {
                other.initialized
                    && other.region.id != peer.region.id
                    && other.region.id != META_GROUP_ID
                    && overlaps(&other.region, &peer.region)
            });
            if !owned && peer.region.id != META_GROUP_ID {
                snapshot::clear(&*engine_snapshot, &peer.region, &mut batch)?;
            }
        }
        if !batch.is_empty() {
            // Left for now if the disk refuses it (full, say): the data is unreachable
            // (no replica here owns its range), and a snapshot over the range clears it.
            if let Err(error) = self.engine.write(batch) {
                tracing::warn!(%error, "could not clear the data of lingering replicas");
            }
        }
        Ok(())
    }

    /// Replaces the observer of applied commands (none by default).
    pub fn set_observer(&mut self, observer: Box<dyn ApplyObserver>) {
        self.observer = observer;
    }

    /// Where outgoing snapshots' data waits for the transport.
    pub fn snapshot_sources(&self) -> SnapshotSources {
        self.storage.snapshots.clone()
    }

    /// Where received snapshots are staged until installed.
    pub fn snapshot_stager(&self) -> Stager {
        self.stager.clone()
    }

    /// This store's id.
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    fn start_peer(
        &mut self,
        region: Region,
        conf_state: &ConfStateRecord,
        campaign: bool,
    ) -> Result<Option<&mut Peer>, RaftstoreError> {
        let Some(meta) = region.peer_on_store(self.store_id).cloned() else {
            return Ok(None);
        };
        let storage = PeerStorage::load(&self.storage, region.clone(), conf_state)?;
        let sole_voter = conf_state.voters == [meta.id] && !conf_state.is_joint();
        let mut peer = Peer::new(storage, region, meta, true, &self.config, &self.logger)?;
        if campaign || sole_voter {
            peer.raw.campaign().map_err(|e| RaftstoreError::InvalidCommand(e.to_string()))?;
        }
        let id = peer.region.id;
        self.beat_targets.extend(peer.region.peers.iter().map(|p| p.store_id));
        self.peers.insert(id, Box::new(peer));
        self.ticking.insert(id);
        Ok(self.peer_mut(id))
    }

    /// Ids of the groups with a replica here (including the placement group, and removed
    /// replicas that still vote: see [`crate::linger`]).
    pub fn group_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// Proposes `data` (an encoded [`RaftCommand`], or a placement command for
    /// [`META_GROUP_ID`]) to a group; `callback` runs once the entry is applied or refused.
    /// Data commands are cheaper through [`Store::propose_command`], which spares apply
    /// from decoding them.
    pub fn propose(&mut self, group_id: u64, data: Vec<u8>, callback: Callback) {
        self.propose_entry(group_id, data, None, callback);
    }

    /// Proposes a data command to a data Region's group; see [`EncodedCommand`].
    pub fn propose_command(&mut self, group_id: u64, command: EncodedCommand, callback: Callback) {
        let EncodedCommand { command, data } = command;
        self.propose_entry(group_id, data, Some(command), callback);
    }

    fn propose_entry(
        &mut self,
        group_id: u64,
        data: Vec<u8>,
        command: Option<RaftCommand>,
        callback: Callback,
    ) {
        let size = data.len() as u64;
        if size > self.config.max_entry_bytes {
            let limit = self.config.max_entry_bytes;
            return callback(Err(RaftstoreError::EntryTooLarge {
                region_id: group_id,
                size,
                limit,
            }));
        }
        let now = self.now_ms;
        match self.peer_mut(group_id) {
            // Frozen for a merge: the client asks placement again, and finds the target
            // once the merge is done (or this Region again, thawed).
            Some(peer) if peer.merging.is_some() => {
                callback(Err(RaftstoreError::NotLeader { region_id: group_id, leader: None }))
            }
            Some(peer) if peer.initialized => peer.propose(data, command, callback, now),
            _ => callback(Err(RaftstoreError::RegionNotFound(group_id))),
        }
    }

    /// Proposes to freeze the local leader's Region (the source) to merge it into its
    /// neighbour `target`, as placement last saw it; `callback` gets
    /// [`ApplyOutput::Merge`] with the frozen source once applied. The rest follows by
    /// itself (see [`crate::merge`]): the target absorbs it, or, if the target changed
    /// first, the source is thawed. Refused ([`RaftstoreError::ChangeRefused`]) unless the
    /// two are neighbours with replicas on the same stores, the target's replica here is
    /// at `target`'s epoch, and every follower has the log nearly up to the leader's.
    pub fn propose_prepare_merge(&mut self, source_id: u64, target: Region, callback: Callback) {
        let now = self.now_ms;
        self.touch(source_id);
        let local_target = self.peers.get(&target.id).filter(|p| p.initialized);
        let target_check = match local_target {
            None => Err(format!("no replica of region {} here", target.id)),
            Some(t) if t.region.epoch() != target.epoch() => Err(format!(
                "region {} is at {:?} here, not {:?}",
                target.id,
                t.region.epoch(),
                target.epoch()
            )),
            Some(t) if t.merging.is_some() => {
                Err(format!("region {} is itself being merged", target.id))
            }
            Some(_) => Ok(()),
        };
        let config = &self.config;
        let Some(peer) = self.peers.get_mut(&source_id).filter(|p| p.initialized) else {
            return callback(Err(RaftstoreError::RegionNotFound(source_id)));
        };
        if !peer.is_leader() {
            return callback(Err(peer.not_leader()));
        }
        let checked = target_check
            .and_then(|()| merge::check_shapes(&peer.region, &target))
            .and_then(|()| check_prepare(peer, config));
        let min_index = match checked {
            Ok(min_index) => min_index,
            Err(reason) => return callback(Err(RaftstoreError::ChangeRefused(reason))),
        };
        let command = RaftCommand {
            region_id: source_id,
            conf_ver: peer.region.conf_ver,
            version: peer.region.version,
            prepare_merge: Some(Box::new(merge::PrepareMerge { target: Some(target), min_index })),
            ..Default::default()
        };
        let data = command.encode_to_vec();
        let context = merge::prepare_context(min_index);
        peer.propose_with_context(context, data, Some(command), callback, now);
    }

    /// Proposes a membership change of a group; `callback` gets
    /// [`ApplyOutput::ConfChanged`] once it is applied. Refused (with
    /// [`RaftstoreError::ChangeRefused`]) while another change is in progress, if it would
    /// remove the leader, or if the new configuration would lack a quorum of replicas the
    /// leader has heard from recently. With `planned`, refused unless the group is still
    /// at that epoch: a step planned against one configuration must not apply to the next
    /// (two placement leaders, or one step sent twice, could otherwise both apply a step
    /// planned at one epoch). As no change is proposed while another is in flight, the
    /// epoch checked here is the one the change applies at.
    pub fn propose_conf_change(
        &mut self,
        group_id: u64,
        changes: Vec<PeerChange>,
        planned: Option<RegionEpoch>,
        callback: Callback,
    ) {
        let now = self.now_ms;
        self.touch(group_id);
        let Some(peer) = self.peers.get_mut(&group_id).filter(|p| p.initialized) else {
            return callback(Err(RaftstoreError::RegionNotFound(group_id)));
        };
        if !peer.is_leader() {
            return callback(Err(peer.not_leader()));
        }
        if peer.merging.is_some() {
            let reason = format!("region {group_id} is frozen for a merge");
            return callback(Err(RaftstoreError::ChangeRefused(reason)));
        }
        if let Some(planned) = planned.filter(|e| *e != peer.region.epoch()) {
            let reason = format!(
                "planned against epoch {planned:?}; region {group_id} is at {:?}",
                peer.region.epoch()
            );
            return callback(Err(RaftstoreError::ChangeRefused(reason)));
        }
        if let Err(reason) = check_conf_change(peer, &changes, &self.config, now) {
            return callback(Err(RaftstoreError::ChangeRefused(reason)));
        }
        let before = peer.raw.raft.raft_log.last_index();
        let cc = conf_change::to_conf_change(&changes);
        if let Err(e) = peer.raw.propose_conf_change(Vec::new(), cc) {
            return callback(Err(RaftstoreError::ChangeRefused(e.to_string())));
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            return callback(Err(peer.not_leader()));
        }
        let term = peer.raw.raft.term;
        peer.proposals.push_back(crate::peer::Proposal {
            index,
            term,
            callback,
            command: None,
            proposed_ms: now,
        });
    }

    /// Asks the local leader of a group to hand leadership to `peer_id`. It stops serving
    /// reads from its lease at once: the new leader may be elected before the lease would
    /// have run out.
    pub fn transfer_leader(&mut self, group_id: u64, peer_id: u64) -> Result<(), RaftstoreError> {
        let peer = self
            .peer_mut(group_id)
            .filter(|p| p.initialized)
            .ok_or(RaftstoreError::RegionNotFound(group_id))?;
        if !peer.is_leader() {
            return Err(peer.not_leader());
        }
        if peer_id == peer.meta.id {
            return Ok(());
        }
        let target = peer.region.peer(peer_id).cloned();
        if target.as_ref().is_none_or(|t| t.is_learner()) {
            return Err(RaftstoreError::ChangeRefused(format!(
                "peer {peer_id} is not a voter of group {group_id}"
            )));
        }
        // raft-rs drops every proposal until the transferee has the whole log and takes
        // over, or an election timeout passes: a transferee far behind (or taking a
        // snapshot) would stall writes that long. TiKV's leader_transfer_max_log_lag, 128.
        // (Not "replicating": an idle group leaves a caught-up follower probing for ever.)
        let last = peer.raw.raft.raft_log.last_index();
        let caught_up = peer.raw.raft.prs().get(peer_id).is_some_and(|pr| {
            pr.state != ProgressState::Snapshot && pr.matched + TRANSFER_MAX_LAG >= last
        });
        if !caught_up {
            return Err(RaftstoreError::ChangeRefused(format!(
                "peer {peer_id} of group {group_id} is behind the leader's log; \
                 leadership moves to it once it has caught up"
            )));
        }
        peer.lease_until_ms = 0;
        peer.raw.transfer_leader(peer_id);
        self.publish(group_id);
        Ok(())
    }

    /// Asks for a read of a group at its current state: `callback` runs once this replica
    /// has confirmed with a quorum that it still leads and has applied everything committed
    /// before the request (a ReadIndex round), or with an error. Reads queued in one round
    /// share one ReadIndex round.
    pub fn read_index(&mut self, group_id: u64, callback: ReadCallback) {
        match self.peer_mut(group_id).filter(|p| p.initialized) {
            Some(peer) if peer.ready_for_reads() => peer.read_batch.push(callback),
            Some(peer) => callback(Err(peer.not_leader())),
            None => callback(Err(RaftstoreError::RegionNotFound(group_id))),
        }
    }

    /// Delivers a message from a replica on another store, with the data of the snapshot
    /// it carries, if any. May create the receiving replica (a leader writing to a replica
    /// this store does not have yet: a new learner, or a Region split off elsewhere
    /// first), or destroy one that was removed.
    pub fn step(
        &mut self,
        message: PeerMessage,
        snapshot: Option<SnapshotData>,
    ) -> Result<(), StepError> {
        let region_id = message.region_id;
        let result = self.step_message(message, snapshot);
        // Most messages (a heartbeat's answer, say) make no work: marking only those that
        // did keeps a round from looking at every group that merely heard something.
        self.mark_if_busy(region_id);
        if let Some(data) = snapshot {
            // Staged data that no replica waits for is deleted now.
            let kept = self.peers.get(&region_id).and_then(|p| p.pending_snapshot);
            if kept != Some(data) {
                self.stager.discard(data);
            }
        }
        result
    }

    fn step_message(
        &mut self,
        message: PeerMessage,
        snapshot: Option<SnapshotData>,
    ) -> Result<(), StepError> {
        if message.to.store_id != self.store_id {
            return Err(StepError::WrongStore(message.to.store_id));
        }
        let from = message.from.store_id;
        let changed = match message.store_beat {
            0 => self.liveness.heard(from),
            // Only the stores this one beats are judged: one holding none of its groups
            // (any more, as a removed replica lingering there; or yet, as a peer added by
            // a change not applied here) would stay judged, suspect once silent.
            incarnation if self.beat_targets.contains(&from) => {
                self.liveness.beat(from, incarnation)
            }
            _ => None,
        };
        if let Some(transition) = changed {
            self.on_store_transition(transition);
        }
        if message.store_beat != 0 {
            return Ok(());
        }
        if let Some(what) = message.hibernate {
            self.on_hibernate(&message, what);
            return Ok(());
        }
        let region_id = message.region_id;
        if message.is_tombstone {
            return self.on_tombstone(message);
        }
        if self.peers.get(&region_id).is_some_and(|p| p.installing.is_some()) {
            return Err(StepError::Installing);
        }
        // A replica asking whether it is still a member is told that the one it asked is
        // gone; so is any replica of a Region absorbed by a merge (a voter that slept
        // through it campaigns, and never asks).
        let asks = message.is_stale_check || self.absorbed_into.contains_key(&region_id);
        if asks && self.gone_here(region_id, message.to.id) {
            self.answer_gone(&message);
        }
        let local = self.peers.get(&region_id);
        if local.is_some_and(|p| p.lingering.is_some() && p.meta.id == message.to.id) {
            match message.message.get_msg_type() {
                // Its data is gone for good: it takes none back.
                MessageType::MsgSnapshot => return Err(StepError::StaleReplica),
                // It never campaigns.
                MessageType::MsgTimeoutNow => return Ok(()),
                _ => {}
            }
        }
        let local_id = local.map(|p| p.meta.id);
        match local_id {
            Some(id) if id == message.to.id => {}
            Some(id) if id > message.to.id => return Err(StepError::StaleReplica),
            Some(_) => {
                // Our replica was removed and a new one added here since: it is obsolete.
                self.destroy_peer(region_id).map_err(|_| StepError::StaleReplica)?;
                self.create_peer(&message)?;
            }
            None => {
                if self.tombstones.get(&region_id).is_some_and(|&removed| removed >= message.to.id)
                {
                    return Err(StepError::StaleReplica);
                }
                self.create_peer(&message)?;
            }
        }
        self.deliver(message, snapshot)
    }

    /// Creates an uninitialized replica for a message to a peer of a group this store
    /// does not hold yet: from a leader (it will send a snapshot), or from a candidate
    /// asking for a vote (as TiKV does). A replica that never received the group's data
    /// can vote safely: it was never part of a quorum that committed anything, so every
    /// committed entry is on the other members of any majority it completes. Without it
    /// a Region split off while one replica lagged, which then loses another replica,
    /// could never elect a leader again (found by the simulator).
    fn create_peer(&mut self, message: &PeerMessage) -> Result<(), StepError> {
        let initial = matches!(
            message.message.get_msg_type(),
            MessageType::MsgAppend
                | MessageType::MsgHeartbeat
                | MessageType::MsgSnapshot
                | MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
        );
        if !initial {
            return Err(StepError::UnknownGroup);
        }
        let storage = PeerStorage::uninitialized(&self.storage, message.region_id)
            .map_err(|_| StepError::UnknownGroup)?;
        let region = Region { id: message.region_id, ..Default::default() };
        let mut peer =
            Peer::new(storage, region, message.to.clone(), false, &self.config, &self.logger)
                .map_err(|_| StepError::UnknownGroup)?;
        if peer.raw.raft.term > 0 {
            // It existed before this store restarted (its term was persisted).
            peer.votes_refused_until_ms = self.votes_refused_until_ms;
        }
        tracing::info!(
            group = message.region_id,
            peer = message.to.id,
            "created a replica for a leader's or candidate's message; it waits for a snapshot"
        );
        self.tombstones.remove(&message.region_id);
        self.beat_targets.insert(message.from.store_id);
        self.peers.insert(message.region_id, Box::new(peer));
        self.ticking.insert(message.region_id);
        self.dirty.insert(message.region_id);
        Ok(())
    }

    fn deliver(
        &mut self,
        message: PeerMessage,
        snapshot: Option<SnapshotData>,
    ) -> Result<(), StepError> {
        let region_id = message.region_id;
        let now = self.now_ms;
        if message.is_snapshot() {
            self.check_snapshot(&message, snapshot.is_some())?;
        }
        let peer = self.peers.get_mut(&region_id).expect("the receiving replica exists");
        peer.heard_ms.insert(message.from.id, now);
        let kind = message.message.get_msg_type();
        let vote = matches!(kind, MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        // An uninitialized replica votes too (see `create_peer`).
        if vote && now < peer.votes_refused_until_ms {
            return Ok(());
        }
        let from_member = peer.region.peer(message.from.id).is_some();
        if !from_member && peer.initialized && message.epoch.conf_ver < peer.region.conf_ver {
            // A replica that missed its own removal: tell it, so it destroys itself. Any
            // member does, not only the leader: the removed replica knows only the members
            // of its own old configuration, and the leader may have joined since (the
            // simulator, seed 21237: a replica removed while partitioned kept asking two
            // followers for votes, and its stale range blocked the snapshots of the
            // Regions split from it there, for ever). Its epoch is older and it is not in
            // this newer configuration, so it was removed: a peer id is never re-added.
            self.outbox.push(PeerMessage {
                region_id,
                from: peer.meta.clone(),
                to: message.from,
                epoch: peer.region.epoch(),
                is_tombstone: true,
                members: peer.region.peers.clone(),
                ..PeerMessage::default()
            });
            return Ok(());
        }
        if message.is_stale_check {
            // From a member (or from a replica newer than this one): nothing to say.
            return Ok(());
        }
        if stale_rejection(peer, &message.message) {
            return Ok(());
        }
        // A peer of a newer configuration than this replica's (one of the same version
        // that is not a member was removed, and lingers): answered until this replica
        // applies the change that added it.
        let newer = !peer.initialized || message.epoch.conf_ver > peer.region.conf_ver;
        if !from_member && newer {
            peer.known_peers.insert(message.from.id, message.from.clone());
            self.beat_targets.insert(message.from.store_id);
        }
        // A message wakes a sleeping replica, but for a late answer to a leader's
        // heartbeat, which wakes it only if it makes work (see below).
        let late_answer = peer.is_leader() && kind == MessageType::MsgHeartbeatResponse;
        if !peer.sleep.is_awake() && !late_answer {
            let from_leader = message.from.id == peer.raw.raft.leader_id;
            if let Some(wake) = peer.wake(!from_leader, &self.liveness, now) {
                self.outbox.push(wake);
            }
            self.ticking.insert(region_id);
        }
        let position =
            |s: &raft::prelude::Snapshot| (s.get_metadata().index, s.get_metadata().term);
        let incoming = message.message.snapshot.as_ref().map(position);
        let result = peer.raw.step(message.message);
        if let Some(data) = snapshot {
            // The data goes with the snapshot raft-rs now holds, only if that is this one:
            // one it refused (older than what the replica has) must not replace the data
            // of another it took before this round (the data would not match the
            // snapshot's index); `step` deletes what is not kept.
            let held = peer.raw.raft.raft_log.unstable.snapshot.as_ref().map(position);
            if held.is_some() && held == incoming {
                if let Some(replaced) = peer.pending_snapshot.replace(data) {
                    if replaced != data {
                        self.stager.discard(replaced);
                    }
                }
            }
        }
        if !peer.sleep.is_awake() && peer.raw.has_ready() {
            if let Some(wake) = peer.wake(true, &self.liveness, now) {
                self.outbox.push(wake);
            }
            self.ticking.insert(region_id);
        }
        match result {
            Ok(()) | Err(raft::Error::StepPeerNotFound) => Ok(()),
            Err(e) => {
                tracing::debug!(group = region_id, error = %e, "raft refused a message");
                Ok(())
            }
        }
    }

    fn check_snapshot(&self, message: &PeerMessage, has_data: bool) -> Result<(), StepError> {
        let refuse = |why: &str| Err(StepError::SnapshotRefused(why.to_string()));
        if !has_data {
            return refuse("its data did not arrive");
        }
        let Some(snapshot) = message.message.snapshot.as_ref() else {
            return refuse("no snapshot in the message");
        };
        let Ok(header) = SnapshotHeader::decode(snapshot.data.as_ref()) else {
            return refuse("undecodable header");
        };
        let Some(region) = header.region else { return refuse("no Region in the header") };
        if region.id != message.region_id || region.peer(message.to.id).is_none() {
            return refuse("for another Region or replica");
        }
        let local = &self.peers[&message.region_id];
        if local.initialized && region.epoch().is_stale_against(&local.region.epoch()) {
            return refuse("older than the Region here");
        }
        if self.predates_a_merge_here(&region, &header.absorbed) {
            return refuse("from before a merge whose source here is gone");
        }
        // A source replica the snapshot's Region absorbed, or an obsolete one, is not in
        // the way: the snapshot replaces it (see `crate::merge`).
        let overlapping = self.peers.values().any(|p| {
            p.initialized
                && p.region.id != region.id
                && p.region.id != META_GROUP_ID
                && !self.gives_way(p, &region, &header.absorbed)
                && overlaps(&p.region, &region)
        });
        if region.id != META_GROUP_ID && overlapping {
            return refuse("overlaps another Region here (a split not applied here yet)");
        }
        Ok(())
    }

    /// Whether `peer`, a source replica frozen to merge into `region`'s Region or known to
    /// have been absorbed by it, or an obsolete one, gives way to a snapshot of `region`
    /// over its range. Only to one from after the merge: a Region's version only grows
    /// along splits and merges, and the merge leaves the target above the source's, so a
    /// snapshot at or below the source's version is from before the source was split off
    /// (a delayed one, to a replica with no data yet). Taken, it would bring back the
    /// range without this source, whose merge that replica could then never apply.
    ///
    /// A source frozen to merge into `region`'s Region gives way only if the snapshot's
    /// record of the merges it `absorbed` names it (or is full: [`merge::MAX_ABSORBED`]):
    /// a prepare proves nothing of the commit. A replica that slept through its Region's
    /// rollback, a split and a merge of the other piece into the same target, then met
    /// the target's snapshot, gave way and recorded a merge that never happened, which
    /// refused the target's later snapshots here and, told to its members, could destroy
    /// live replicas of the source (found by review).
    fn gives_way(&self, peer: &Peer, region: &Region, absorbed: &[merge::AbsorbedSource]) -> bool {
        let records = |source: u64| {
            absorbed.len() >= merge::MAX_ABSORBED || absorbed.iter().any(|a| a.source_id == source)
        };
        let frozen_into = peer.merging.as_ref().is_some_and(|s| s.target_id() == region.id);
        let absorbed_here = peer.absorbed_by == region.id || frozen_into && records(peer.region.id);
        (absorbed_here || self.obsolete(peer)) && region.version > peer.region.version
    }

    /// Whether a snapshot of `region`, recording the merges it had `absorbed`, is from
    /// before a merge into it whose source's replica here is destroyed. Taken (by a
    /// replica with no data yet, its snapshot delayed on the way), its log would reach the
    /// commit and wait for that source for ever: the source gave way to a later snapshot
    /// of another Region over its range (a piece of the union split off since). The
    /// leader sends a newer snapshot instead. The record keeps the last
    /// [`merge::MAX_ABSORBED`] merges: a full one that lacks the source proves nothing.
    fn predates_a_merge_here(&self, region: &Region, absorbed: &[merge::AbsorbedSource]) -> bool {
        let lacks = |source: u64| {
            absorbed.len() < merge::MAX_ABSORBED && absorbed.iter().all(|a| a.source_id != source)
        };
        (self.absorbed_into.iter()).any(|(&source, &target)| target == region.id && lacks(source))
    }

    /// Whether replica `peer_id` of a group is destroyed here (a tombstone, or replaced by
    /// a newer replica of the group) or lingering: it never counts votes again.
    fn gone_here(&self, group_id: u64, peer_id: u64) -> bool {
        match self.peers.get(&group_id) {
            Some(p) => p.meta.id > peer_id || p.meta.id == peer_id && p.lingering.is_some(),
            None => self.tombstones.get(&group_id).is_some_and(|&removed| removed >= peer_id),
        }
    }

    /// Tells a replica asking whether it is still a member (`message`, a stale check)
    /// that the replica it asked is destroyed or lingering here: it never votes again.
    fn answer_gone(&mut self, message: &PeerMessage) {
        self.outbox.push(PeerMessage {
            region_id: message.region_id,
            from: message.to.clone(),
            to: message.from.clone(),
            is_tombstone: true,
            gone: true,
            merged_into: self.absorbed_into.get(&message.region_id).copied().unwrap_or(0),
            ..PeerMessage::default()
        });
    }

    fn on_tombstone(&mut self, message: PeerMessage) -> Result<(), StepError> {
        let id = message.region_id;
        let Some(peer) = self.peer_mut(id) else { return Ok(()) };
        if peer.meta.id != message.to.id {
            return Ok(());
        }
        let (me, from, conf_ver) = (peer.meta.id, message.from.id, message.epoch.conf_ver);
        let result = match (&mut peer.lingering, message.gone) {
            (Some(lingering), true) => {
                let changed = lingering.on_gone(from);
                self.after_answer(id, changed)
            }
            (Some(lingering), false) => {
                let changed = lingering.on_answer(me, from, conf_ver, &message.members);
                self.after_answer(id, changed)
            }
            // A member absorbed by a merge: this replica slept through it.
            (None, true) if message.merged_into != 0 => {
                self.learn_absorbed(id, message.merged_into)
            }
            // Says nothing of this replica's own membership: only a lingering one cares.
            (None, true) => Ok(()),
            (None, false) if !peer.initialized => {
                tracing::info!(group = id, peer = me, "removed from its Region");
                self.destroy_peer(id)
            }
            (None, false) if peer.region.conf_ver < conf_ver => {
                let member_conf_ver = peer.region.conf_ver;
                let newest = (conf_ver, message.members.as_slice());
                self.linger(id, member_conf_ver, newest, Some(from))
            }
            (None, false) => Ok(()),
        };
        result.map_err(|_| StepError::StaleReplica)
    }

    /// The local replica of a group learnt that its Region was absorbed into `target` by
    /// a merge it slept through (see [`crate::merge`]). Its data is obsolete; it stays
    /// only while the target's replica here may still absorb it by applying the merge
    /// from its log (or there is no such replica yet), and otherwise goes at once. A
    /// snapshot of the target from after the merge replaces it.
    fn learn_absorbed(&mut self, id: u64, target: u64) -> Result<(), RaftstoreError> {
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        if peer.absorbed_by == target {
            return Ok(());
        }
        peer.absorbed_by = target;
        let may_absorb = self.may_absorb(target, &self.peers[&id].region);
        tracing::info!(group = id, target, may_absorb, "absorbed by a merge it slept through");
        // No replica of the target here yet, or one with no data: it may still come, from
        // a split here or a snapshot from before the merge, and then apply the merge from
        // its log, which needs this replica (simulator seed 426 of 60 s runs with registers
        // only and `--unsafe-frozen-reads`: a target's replica created by its split after
        // the source here went waited for it for ever, as the leader). Meanwhile, as an
        // obsolete replica, it gives way to any snapshot over its range.
        let target_here = self.peers.get(&target).is_some_and(|t| t.initialized);
        if may_absorb || !target_here {
            return Ok(());
        }
        self.destroy_peer(id)
    }

    /// Whether the local replica of `target` may still absorb a source replica of
    /// `source` here, by applying the merge from its log: it serves, neither covers the
    /// source yet nor is itself frozen, and, if it slept through a merge of its own, may
    /// still be caught up to it ([`Store::may_be_caught_up`]): the entries that catch it
    /// up hold the commit of this source (merges in a cascade; simulator seed 135000619:
    /// a source learnt of its merge after its target learnt of the target's own, and went,
    /// and the target's catch-up then waited for it for ever).
    fn may_absorb(&self, target: u64, source: &Region) -> bool {
        self.may_absorb_within(target, source, MAX_CASCADE)
    }

    fn may_absorb_within(&self, target: u64, source: &Region, depth: usize) -> bool {
        self.peers.get(&target).is_some_and(|t| {
            t.initialized
                && t.merging.is_none()
                && !t.raw.store().has_absorbed(source.id)
                && !overlaps(&t.region, source)
                && (t.absorbed_by == 0 || depth > 0 && self.may_be_caught_up(t, depth - 1))
        })
    }

    /// Whether `peer`, absorbed by a merge it slept through, may still be caught up here
    /// (its absorber's replica applying the merge carries its log to the prepare): that
    /// replica may absorb it, or there is none here yet (it may come from a split).
    fn may_be_caught_up(&self, peer: &Peer, depth: usize) -> bool {
        let absorber_here = self.peers.get(&peer.absorbed_by).is_some_and(|a| a.initialized);
        !absorber_here || self.may_absorb_within(peer.absorbed_by, &peer.region, depth)
    }

    /// Whether the frozen source replica `source`, whose merge is known to have committed
    /// (`absorbed_by`), can never be absorbed here: the target's replica on this store in
    /// the configuration the prepare recorded is gone for good (a tombstone, a newer
    /// replica, or lingering). That replica is the only one that could apply the commit
    /// from its log here, since the commit applies only at the recorded epoch; a later
    /// one starts from a snapshot past the merge, over the source's range.
    ///
    /// Not while the source's log holds a rollback it has not applied: the record may
    /// then be of a prepare rolled back, the source merged by a second prepare whose
    /// target configuration had another replica here, which needs this source. A second
    /// prepare waits for every follower's log to hold the rollback (`check_prepare`), and
    /// a replica that has applied the rollback holds the second record or none, so a
    /// record with no rollback after it is the one that committed, or this store was no
    /// member at the second prepare (and the target then had no replica here). Without
    /// this a source whose target's replica left this store before applying the commit
    /// stayed for good. (A recorded target replica never created here is not covered: it
    /// may still come, from a split here.)
    fn never_absorbed(&self, source: &Peer, state: &MergeState) -> bool {
        let target_id = state.target_id();
        let recorded = state.target.as_ref().and_then(|t| t.peer_on_store(self.store_id));
        source.absorbed_by == target_id
            && !holds_unapplied_rollback(source)
            && recorded.is_some_and(|replica| self.gone_here(target_id, replica.id))
    }

    /// Whether `peer` is a source whose merge committed, and no replica here can absorb
    /// it any more: the target's replica here records the merge (it got past it by a
    /// snapshot that does not cover the source), or the source is known to have been
    /// absorbed and the target here cannot take it. Any Region's snapshot over its range
    /// (from after that merge, and whatever followed it) replaces it.
    fn obsolete(&self, peer: &Peer) -> bool {
        let target = peer.merging.as_ref().map_or(peer.absorbed_by, |s| s.target_id());
        let recorded = (self.peers.get(&target))
            .is_some_and(|t| t.initialized && t.raw.store().has_absorbed(peer.region.id));
        recorded || (peer.absorbed_by != 0 && !self.may_absorb(peer.absorbed_by, &peer.region))
    }

    /// Makes the local replica of a group, removed from it, a lingering one (see
    /// [`crate::linger`]): its data and whatever waits on it go, its Raft log and state
    /// stay, and it asks the voters that stay whether they have applied its removal.
    /// `member_conf_ver` is the version of the last configuration that had it, `newest`
    /// the newest configuration known (version, members), `answered` a member that has
    /// already said it applied the removal. A replica with no data of its own yet (or
    /// still writing a snapshot's) is destroyed at once.
    fn linger(
        &mut self,
        id: u64,
        member_conf_ver: u64,
        newest: (u64, &[scandium_types::Peer]),
        answered: Option<u64>,
    ) -> Result<(), RaftstoreError> {
        // Tests stop a store here, as a crash after the batch that applied the removal.
        fail::fail_point!(&format!("linger_{}", self.store_id), |_| Ok(()));
        self.dirty.insert(id);
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        let me = peer.meta.id;
        let mut lingering = Lingering::new(me, member_conf_ver, newest.0, newest.1);
        if let Some(from) = answered {
            lingering.on_answer(me, from, newest.0, newest.1);
        }
        if !peer.initialized || peer.installing.is_some() || lingering.done() {
            tracing::info!(group = id, peer = me, "removed from its Region");
            return self.destroy_peer(id);
        }
        let mut batch = WriteBatch::new();
        if id != META_GROUP_ID {
            snapshot::clear(&*self.engine.snapshot(), &peer.region, &mut batch)?;
        }
        if let Some(data) = peer.pending_snapshot.take() {
            self.stager.discard(data);
        }
        // Nor does it lead, or stand for election: a candidate that won once removed led
        // with no data, and its snapshots were empty (simulator seed 98002613: a follower
        // installed one and lost its Region's older versions).
        if peer.raw.raft.state != StateRole::Follower {
            let (term, was_leader) = (peer.raw.raft.term, peer.is_leader());
            peer.raw.raft.become_follower(term, raft::INVALID_ID);
            if was_leader {
                self.events.push(Event::Role { region_id: id, is_leader: false, term });
            }
        }
        peer.raw.mut_store().set_dataless();
        let region_id = peer.region.id;
        peer.fail_all(|| RaftstoreError::OutcomeUnknown { region_id });
        peer.lease_until_ms = 0;
        peer.initialized = false;
        let conf_state = ConfStateRecord::from(peer.raw.store().conf_state());
        write_lingering(&mut batch, &peer.region, &conf_state, me, &lingering);
        peer.lingering = Some(lingering);
        self.engine.write(batch)?;
        let region = peer.region.clone();
        self.stop_serving(id, Some(&region));
        tracing::info!(
            group = id,
            peer = me,
            "removed from its Region; it votes on until the voters that stay have applied that"
        );
        self.ask_lingering(id);
        Ok(())
    }

    /// After an answer to a lingering replica (`changed`: it changed what the replica
    /// waits for): the replica goes once nothing is left to wait for, and what is left is
    /// persisted otherwise.
    fn after_answer(&mut self, id: u64, changed: bool) -> Result<(), RaftstoreError> {
        let Some(peer) = self.peers.get(&id) else { return Ok(()) };
        let Some(lingering) = peer.lingering.as_ref().filter(|_| changed) else { return Ok(()) };
        if lingering.done() {
            let me = peer.meta.id;
            tracing::info!(group = id, peer = me, "every voter has applied the removal or is gone");
            return self.destroy_peer(id);
        }
        let conf_state = ConfStateRecord::from(peer.raw.store().conf_state());
        let mut batch = WriteBatch::new();
        write_lingering(&mut batch, &peer.region, &conf_state, peer.meta.id, lingering);
        self.engine.write(batch)?;
        Ok(())
    }

    /// Restarts a replica that was lingering when the node stopped.
    fn restart_lingering(&mut self, state: RegionLocalState) -> Result<(), RaftstoreError> {
        let conf_state = state.conf_state();
        let region = state.region.unwrap_or_default();
        if state.lingering.is_none() {
            // Written with it every time: a damaged record. Counted as destroyed.
            tracing::warn!(
                group = region.id,
                "a lingering replica's record lacks what it waits for"
            );
            self.tombstones.insert(region.id, state.removed_peer_id);
            return Ok(());
        }
        let meta = scandium_types::Peer::new(state.removed_peer_id, self.store_id);
        let mut storage = PeerStorage::load(&self.storage, region.clone(), &conf_state)?;
        storage.set_dataless();
        let mut peer = Peer::new(storage, region, meta, false, &self.config, &self.logger)?;
        peer.lingering = state.lingering;
        // As for any restarted replica (see `open`).
        peer.votes_refused_until_ms = u64::MAX;
        self.dirty.insert(peer.region.id);
        self.ticking.insert(peer.region.id);
        self.peers.insert(peer.region.id, Box::new(peer));
        Ok(())
    }

    /// Asks every voter of the newest configuration a lingering replica knows whether it
    /// has applied the replica's removal: one past it answers with a tombstone.
    fn ask_lingering(&mut self, id: u64) {
        let Some(peer) = self.peers.get(&id) else { return };
        let Some(lingering) = &peer.lingering else { return };
        let epoch =
            RegionEpoch { conf_ver: lingering.member_conf_ver, version: peer.region.version };
        // Every voter, not only those still to answer: their answers name the members,
        // so a configuration that replaced a voter dead for good is learnt.
        self.outbox.extend(lingering.voters.iter().map(|voter| PeerMessage {
            region_id: id,
            from: peer.meta.clone(),
            to: voter.clone(),
            epoch,
            is_stale_check: true,
            ..PeerMessage::default()
        }));
    }

    /// The transport could not deliver a message to `peer_id` of a group.
    pub fn report_unreachable(&mut self, group_id: u64, peer_id: u64) {
        // Not a request that wakes or keeps awake: an awake leader heartbeating a
        // follower on a dead store hears this every time, and must still sleep without
        // it (a sleeping one sends nothing to be told of).
        if let Some(peer) = self.peers.get_mut(&group_id) {
            peer.raw.report_unreachable(peer_id);
            self.mark_if_busy(group_id);
        }
    }

    /// The transport finished (or failed) sending a snapshot to `peer_id` of a group.
    pub fn report_snapshot(&mut self, group_id: u64, peer_id: u64, delivered: bool) {
        let now = self.now_ms;
        self.touch(group_id);
        if let Some(peer) = self.peers.get_mut(&group_id) {
            let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            let index = peer.raw.raft.prs().get(peer_id).map_or(0, |pr| pr.pending_snapshot);
            if delivered && index > 0 {
                peer.snapshots_delivered.insert(peer_id, (index, now));
            }
            peer.raw.report_snapshot(peer_id, status);
            self.mark_if_busy(group_id);
        }
    }

    /// Advances every group's logical clock by one tick; `now_ms` is the store's clock
    /// (monotonic milliseconds).
    pub fn tick(&mut self, now_ms: u64) {
        self.set_time(now_ms);
        self.ticks += 1;
        self.tick_liveness();
        let timeout = 2 * self.config.election_ms();
        let mut lingering = Vec::new();
        let (hibernate_after, ask_ticks) =
            (self.config.hibernate_after_ticks, crate::hibernate::ask_ticks(&self.config));
        let (mut idle, mut unanswered) = (Vec::new(), Vec::new());
        for id in &self.ticking {
            let Some(peer) = self.peers.get_mut(id).filter(|p| p.installing.is_none()) else {
                continue;
            };
            if peer.lingering.is_some() {
                // Time passes for its leader's lease, after which it votes again, but it
                // never campaigns.
                peer.raw.raft.election_elapsed += 1;
                lingering.push(*id);
                continue;
            }
            let (leads, last) = (peer.is_leader(), peer.raw.raft.raft_log.last_index());
            match &mut peer.sleep {
                Sleep::Asleep => continue,
                Sleep::Asking { ticks, .. } => {
                    // No heartbeat meanwhile, so that followers asleep stay so; not
                    // every answer came in time: it wakes, and heartbeats.
                    *ticks += 1;
                    if *ticks > ask_ticks {
                        unanswered.push(*id);
                    }
                    continue;
                }
                Sleep::Awake { idle_ticks, last_index } if hibernate_after > 0 && leads => {
                    if *last_index == last {
                        *idle_ticks += 1;
                    } else {
                        (*idle_ticks, *last_index) = (0, last);
                    }
                    if *idle_ticks >= hibernate_after {
                        idle.push(*id);
                    }
                }
                Sleep::Awake { .. } => {}
            }
            // raft-rs says whether the tick made work (a heartbeat, a campaign, a
            // check-quorum); nothing else a tick does here makes any but the proposal
            // below. `check_invariants` holds it to that.
            let mut work = peer.raw.tick();
            peer.expire_reads(now_ms, timeout);
            // Long enough for a replica deposed without a successor (check-quorum) to
            // hear the next leader, elected after its own election timeout.
            peer.expire_proposals(now_ms, timeout);
            if peer.is_leader() && !peer.raw.raft.has_pending_conf() {
                let cs = peer.raw.store().conf_state();
                if !cs.voters_outgoing.is_empty() {
                    // A joint configuration whose leave was lost (a leader change).
                    let _ = peer.raw.propose_conf_change(Vec::new(), conf_change::leave_joint());
                    work = true;
                }
            }
            if work {
                self.dirty.insert(*id);
            }
        }
        for id in unanswered {
            self.touch(id);
        }
        self.ask_to_sleep(idle);
        self.check_stale_replicas();
        if self.ticks.is_multiple_of(merge::MERGE_CHECK_TICKS) {
            let frozen: Vec<u64> = self.merging.iter().copied().collect();
            self.check_merges(frozen);
        }
        // Targets waiting at a commit for their source replica look again.
        for id in std::mem::take(&mut self.merge_waiting) {
            self.merge_retry.insert(id);
        }
        let ask_every = 2 * self.config.election_ticks.max(1) as u64;
        if self.ticks.is_multiple_of(ask_every) {
            for id in lingering {
                self.ask_lingering(id);
            }
        }
        if self.ticks.is_multiple_of(PUBLISH_EVERY_TICKS) {
            // Leases, lagging peers and whether followers still hear their leader change
            // without rounds.
            // Not a hibernating one's: nothing changes while it sleeps.
            let awake = (self.ticking.iter())
                .filter(|id| self.peers.get(id).is_some_and(|p| p.sleep.is_awake()));
            let ids: Vec<u64> = awake.copied().collect();
            for id in ids {
                self.publish(id);
            }
            // A leader's window of appends in flight to a follower (2 KiB each) stays
            // allocated after the last one is acknowledged, until a role or progress
            // state change: an idle leader gives it back until it sends again.
            for id in &self.ticking {
                if let Some(peer) = self.peers.get_mut(id) {
                    peer.raw.raft.maybe_free_inflight_buffers();
                }
            }
        }
    }

    /// Looks at the target of each Region frozen here for a merge (`ids`; see
    /// [`crate::merge`]): where the target's replica here leads, at the epoch the source
    /// recorded, it proposes the commit; where the source's replica here leads and the
    /// target's replica here shows a newer epoch, the rollback. Each at most every
    /// [`merge::COMMIT_RESEND_MS`].
    fn check_merges(&mut self, ids: Vec<u64>) {
        let now = self.now_ms;
        let mut obsolete = Vec::new();
        for id in ids {
            let Some(state) = self.peers.get(&id).and_then(|p| p.merging.as_deref().cloned())
            else {
                self.merging.remove(&id);
                self.merge_looks.remove(&id);
                continue;
            };
            let look = *self
                .merge_looks
                .entry(id)
                .or_insert(MergeLook { first_ms: now, proposed_ms: None });
            if look.proposed_ms.is_some_and(|at| now < at + merge::COMMIT_RESEND_MS) {
                continue;
            }
            let serving = |p: &Peer| p.initialized && p.installing.is_none();
            let Some(source) = self.peers.get(&id).filter(|p| serving(p)) else { continue };
            let target_id = state.target_id();
            let Some(target) = self.peers.get(&target_id).filter(|p| serving(p)) else {
                if self.never_absorbed(source, &state) {
                    obsolete.push((id, target_id, "no replica of the target here can take it"));
                }
                continue;
            };
            if target.raw.store().has_absorbed(id) {
                // The target here is past the merge (a snapshot from after it that does
                // not cover this source, say): this replica is obsolete.
                obsolete.push((id, target_id, "the target here is past the merge"));
                continue;
            }
            let proposal = if merge::moved_on(target.region.epoch(), state.target_epoch()) {
                // The target here moved on without absorbing this source: its log holds a
                // change before any commit of this merge, which every replica refuses.
                if !source.is_leader() {
                    continue;
                }
                tracing::info!(
                    source = id,
                    target = target_id,
                    "the target changed before absorbing the source: rolling the merge back"
                );
                let command = RaftCommand {
                    region_id: id,
                    conf_ver: source.region.conf_ver,
                    version: source.region.version,
                    rollback_merge: Some(Box::new(merge::RollbackMerge { commit: state.commit })),
                    ..Default::default()
                };
                (id, Vec::new(), command)
            } else if target.region.epoch() == state.target_epoch() {
                // Where the target's replica here leads, the source's replica here proposes
                // the commit at once. Elsewhere too, once the merge has waited a resend
                // period, through the target's replica here, which raft-rs forwards to the
                // leader: the source's replica beside the leader may lack entries to carry
                // (one caught up by a snapshot past `min_index`), and any replica whose log
                // holds them will do. A commit that comes second is refused at apply, by
                // the target's epoch.
                if !target.is_leader() && now < look.first_ms + merge::COMMIT_RESEND_MS {
                    continue;
                }
                let Some(command) = commit_command(source, &state) else {
                    let storage = source.raw.store();
                    tracing::debug!(
                        source = id,
                        min_index = state.min_index,
                        commit = state.commit,
                        truncated = storage.apply_state().truncated_index,
                        last = storage.last_index_value(),
                        "the source's log here lacks entries to carry: left to another store"
                    );
                    continue;
                };
                (target_id, merge::commit_context(id), command)
            } else {
                continue;
            };
            let (group, context, command) = proposal;
            if let Some(look) = self.merge_looks.get_mut(&id) {
                look.proposed_ms = Some(now);
            }
            let data = command.encode_to_vec();
            let peer = self.peer_mut(group).expect("found above");
            if peer.is_leader() {
                peer.propose_with_context(context, data, Some(command), Box::new(|_| {}), now);
            } else {
                tracing::info!(
                    source = id,
                    target = group,
                    "proposing the merge's commit through a follower of the target"
                );
                peer.forward_proposal(context, data);
            }
        }
        for (id, target, why) in obsolete {
            tracing::info!(group = id, target, "merged: {why}");
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.absorbed_by = target;
            }
            if let Err(error) = self.destroy_peer(id) {
                tracing::warn!(group = id, %error, "could not destroy an absorbed source");
            }
        }
    }

    /// A hibernation message from another replica of a group (see [`crate::hibernate`]).
    /// From anyone but a member of the group as this replica knows it, it is ignored.
    fn on_hibernate(&mut self, message: &PeerMessage, what: Hibernate) {
        let id = message.region_id;
        let now = self.now_ms;
        let Some(peer) = self.peers.get_mut(&id) else { return };
        if peer.meta.id != message.to.id || peer.region.peer(message.from.id).is_none() {
            return;
        }
        let from = message.from.clone();
        match what {
            Hibernate::Request { term, index, round } => {
                let sleeps = peer.may_sleep_for(from.id, term, index);
                let answer = if sleeps {
                    peer.fall_asleep();
                    self.ticking.remove(&id);
                    // It has just heard from its leader.
                    peer.raw.raft.election_elapsed = 0;
                    Hibernate::Ack { term, index, round }
                } else {
                    Hibernate::Nack
                };
                self.outbox.push(peer.envelope(from, answer));
                if sleeps {
                    self.publish(id);
                }
            }
            Hibernate::Ack { term, index, round } => {
                let Sleep::Asking { term: t, index: i, round: r, acked, .. } = &mut peer.sleep
                else {
                    return;
                };
                if (term, index, round) != (*t, *i, *r) {
                    return;
                }
                acked.insert(from.id);
                let acked = acked.clone();
                let still =
                    peer.raw.raft.term == term && peer.raw.raft.raft_log.last_index() == index;
                match peer.followers_to_ask(&self.liveness, now).filter(|_| still) {
                    Some(asked) if asked.iter().all(|f| acked.contains(f)) => {
                        peer.fall_asleep();
                        peer.slept_with = acked;
                        self.ticking.remove(&id);
                        if self.config.unsafe_sleeping_lease {
                            peer.lease_until_ms = u64::MAX;
                        }
                        self.slept += 1;
                        self.publish(id);
                    }
                    Some(_) => {}
                    None => self.touch(id),
                }
            }
            Hibernate::Nack | Hibernate::Wake => self.touch(id),
        }
    }

    /// Leaders idle for long enough (see [`crate::hibernate`]): each asks its followers
    /// to sleep, or sleeps at once with none to ask.
    fn ask_to_sleep(&mut self, ids: Vec<u64>) {
        let now = self.now_ms;
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else { continue };
            let Some(followers) = peer.followers_to_ask(&self.liveness, now) else { continue };
            let (term, index) = (peer.raw.raft.term, peer.raw.raft.raft_log.last_index());
            if followers.is_empty() {
                peer.fall_asleep();
                self.ticking.remove(&id);
                self.slept += 1;
                self.publish(id);
                continue;
            }
            self.sleep_rounds += 1;
            let round = self.sleep_rounds;
            for follower in followers {
                let Some(to) = peer.peer_by_id(follower) else { continue };
                self.outbox.push(peer.envelope(to, Hibernate::Request { term, index, round }));
            }
            let acked = BTreeSet::new();
            peer.sleep = Sleep::Asking { term, index, round, acked, ticks: 0 };
        }
    }

    /// How many times a leader here put its group to sleep since the store started.
    pub fn groups_slept(&self) -> u64 {
        self.slept
    }

    /// Groups with a replica here, and how many of them hibernate (asleep, or a leader
    /// asking to sleep): a look at each awake one only, as only those tick.
    pub fn count_hibernating(&self) -> (usize, usize) {
        let asking = (self.ticking.iter())
            .filter(|id| self.peers.get(id).is_some_and(|p| !p.sleep.is_awake()))
            .count();
        (self.peers.len(), self.peers.len() - self.ticking.len() + asking)
    }

    /// Whether a group's replica here hibernates (or, a leader, is asking to).
    pub fn is_hibernating(&self, id: u64) -> bool {
        self.peers.get(&id).is_some_and(|p| !p.sleep.is_awake())
    }

    /// Counts a tick of every other store's silence, and beats when due.
    fn tick_liveness(&mut self) {
        let (changed, beat_due) = self.liveness.tick();
        for transition in changed {
            self.on_store_transition(transition);
        }
        if self.beat_targets_stale && self.ticks.is_multiple_of(BEAT_TARGETS_EVERY_TICKS) {
            self.beat_targets_stale = false;
            let mut targets = BTreeSet::new();
            for peer in self.peers.values() {
                targets.extend(peer.region.peers.iter().map(|p| p.store_id));
                targets.extend(peer.known_peers.values().map(|p| p.store_id));
            }
            for &gone in self.beat_targets.difference(&targets) {
                self.liveness.forget(gone);
            }
            self.beat_targets = targets;
        }
        let incarnation = self.config.incarnation;
        if beat_due && incarnation != 0 {
            let me = self.store_id;
            let others = self.beat_targets.iter().filter(|&&s| s != me && s != 0);
            self.outbox.extend(others.map(|&to| PeerMessage::beat(me, to, incarnation)));
        }
    }

    /// Another store's liveness changed: every hibernating group with a replica there
    /// wakes (one look at every replica: it is rare), and only those. A follower whose
    /// leader's store went silent then times out and campaigns as usual; a leader whose
    /// follower's store changed heartbeats it, and sleeps again without it if it stays
    /// silent.
    fn on_store_transition(&mut self, transition: Transition) {
        tracing::debug!(store = self.store_id, ?transition, "a store's liveness changed");
        self.events.push(Event::Store(transition));
        let (Transition::Suspect(store) | Transition::Alive(store) | Transition::Restarted(store)) =
            transition;
        let sleeping: Vec<u64> = (self.peers.iter())
            .filter(|(_, p)| !p.sleep.is_awake() && p.region.peer_on_store(store).is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in sleeping {
            self.touch(id);
        }
    }

    /// Whether another store is suspect: silent for an election timeout. `None` for a
    /// store that has never beaten (not judged).
    pub fn is_store_suspect(&self, store: u64) -> Option<bool> {
        self.liveness.is_suspect(store)
    }

    /// Each replica that has heard from no leader for [`STALE_CHECK_ELECTIONS`] longest
    /// election timeouts asks the members of its configuration, once per such period,
    /// whether it is still one (see `PeerMessage::is_stale_check`). A voter that hears
    /// no leader campaigns, and the members answer its requests the same way; a learner
    /// never campaigns, and only this reaches them.
    fn check_stale_replicas(&mut self) {
        let period = STALE_CHECK_ELECTIONS * self.config.max_election_ticks.max(1);
        let ticking = |p: &&Peer| p.initialized && !p.is_leader() && p.sleep.is_awake();
        let peers = self.ticking.iter().filter_map(|id| self.peers.get(id).map(|p| &**p));
        for peer in peers.filter(ticking) {
            let elapsed = peer.raw.raft.election_elapsed;
            if elapsed == 0 || !elapsed.is_multiple_of(period) {
                continue;
            }
            let members = peer.region.peers.iter().filter(|m| m.id != peer.meta.id);
            self.outbox.extend(members.map(|member| PeerMessage {
                region_id: peer.region.id,
                from: peer.meta.clone(),
                to: member.clone(),
                epoch: peer.region.epoch(),
                is_stale_check: true,
                ..PeerMessage::default()
            }));
        }
    }

    /// Sets the store's clock without ticking.
    pub fn set_time(&mut self, now_ms: u64) {
        let first = self.ticks == 0 && self.now_ms == 0;
        self.now_ms = self.now_ms.max(now_ms);
        self.storage.clock.store(self.now_ms, Ordering::Relaxed);
        if first {
            let until = self.now_ms + self.config.election_ms();
            self.votes_refused_until_ms = until;
            for peer in self.peers.values_mut() {
                if peer.votes_refused_until_ms == u64::MAX {
                    peer.votes_refused_until_ms = until;
                }
            }
        }
    }

    /// Whether any group has work for [`Store::handle_ready`] (a snapshot's data still
    /// going in included).
    pub fn has_ready(&self) -> bool {
        let installs = self.now_ms >= self.install_paused_until_ms;
        self.has_raft_work() || (installs && !self.installing.is_empty())
    }

    /// Whether any group has Raft work for [`Store::handle_ready`]: what a stopping node
    /// finishes. (A snapshot's data still going in is not: it goes on after a restart.)
    pub fn has_raft_work(&self) -> bool {
        if self.config.check_invariants {
            self.check_dirty();
        }
        !self.outbox.is_empty()
            || !self.events.is_empty()
            || !self.merge_retry.is_empty()
            || self.dirty.iter().any(|id| self.peers.get(id).is_some_and(|p| has_work(p)))
    }

    /// The local replica of a group, marked as one that may have work (see `dirty`) and
    /// woken if it hibernates: every request for a replica from outside a round goes
    /// through here or [`Store::touch`].
    fn peer_mut(&mut self, id: u64) -> Option<&mut Peer> {
        let peer = self.peers.get_mut(&id)?;
        self.dirty.insert(id);
        if let Some(message) = peer.wake(true, &self.liveness, self.now_ms) {
            self.outbox.push(message);
        }
        self.ticking.insert(id);
        Some(peer)
    }

    /// See [`Store::peer_mut`].
    fn touch(&mut self, id: u64) {
        let _ = self.peer_mut(id);
    }

    /// Panics if a group with work is not marked: it would wait for an unrelated change
    /// to be noticed. Checks every replica: for tests and the simulator.
    fn check_dirty(&self) {
        for (id, peer) in &self.peers {
            assert!(
                !has_work(peer) || self.dirty.contains(id),
                "store {}: group {id} has Raft work but is not marked",
                self.store_id
            );
            assert_eq!(
                peer.sleep != Sleep::Asleep,
                self.ticking.contains(id),
                "store {}: group {id} ticks only if awake",
                self.store_id
            );
        }
        assert!(self.ticking.iter().all(|id| self.peers.contains_key(id)));
        let hibernating = self.peers.values().filter(|p| !p.sleep.is_awake()).count();
        assert_eq!(self.count_hibernating().1, hibernating, "store {}", self.store_id);
    }

    /// Runs one round: persist (one fsync), apply, answer proposers. See the module docs.
    /// Every message comes out in the returned output; [`Store::handle_ready_sending`]
    /// lets them go out sooner.
    pub fn handle_ready(&mut self) -> Result<RoundOutput, RaftstoreError> {
        let mut early = Vec::new();
        let mut output =
            self.handle_ready_sending(&mut |mut messages| early.append(&mut messages))?;
        early.append(&mut output.messages);
        output.messages = early;
        Ok(output)
    }

    /// Runs one round, handing messages to `send` as soon as they may leave: a leader's
    /// appends before its own fsync, so the followers' fsyncs run alongside it, and every
    /// replica's acknowledgements right after the fsync, before the round's apply. The
    /// commit round trip is then one fsync plus one network hop, not two fsyncs, the
    /// apply and the hop in a row. Messages produced by the apply are in the output.
    pub fn handle_ready_sending(
        &mut self,
        send: &mut dyn FnMut(Vec<PeerMessage>),
    ) -> Result<RoundOutput, RaftstoreError> {
        let now = self.now_ms;
        let installed = self.advance_install()?;
        let mut output = RoundOutput {
            messages: std::mem::take(&mut self.outbox),
            events: std::mem::take(&mut self.events),
            timings: RoundTimings::default(),
            visited: 0,
        };
        // Only the marked groups can have work; the rest are not looked at. In group
        // order, as before: the simulator replays a seed only if rounds are the same.
        let visiting = std::mem::take(&mut self.dirty);
        output.visited = visiting.len();
        for id in &visiting {
            if let Some(peer) = self.peers.get_mut(id) {
                peer.flush_reads(now);
            }
        }
        let mut log_batch = WriteBatch::new();
        let mut must_sync = false;
        let mut readies = Vec::new();
        let mut handing_over = Vec::new();
        // Snapshots installed this round, by group, with their Regions.
        let mut covering = Vec::new();
        for &id in &visiting {
            let Some(peer) = self.peers.get_mut(&id) else { continue };
            if peer.installing.is_some() || !peer.raw.has_ready() {
                continue;
            }
            let mut ready = peer.raw.ready();
            let role = ready.ss().map(|ss| ss.raft_state);
            let messages = ready.take_messages();
            if peer.note_outgoing(&messages) {
                handing_over.push(id);
            }
            output.messages.extend(to_peer_messages(peer, messages));
            if !ready.snapshot().is_empty() {
                install_snapshot(peer, ready.snapshot(), &mut log_batch)?;
                self.installing.insert(id);
                must_sync = true;
                covering.push((id, peer.region.clone()));
            }
            // Entries held back while a snapshot's data went in come first.
            let mut committed = std::mem::take(&mut peer.deferred);
            committed.extend(ready.take_committed_entries());
            peer.raw.mut_store().append(ready.entries(), &mut log_batch);
            if let Some(hs) = ready.hs() {
                peer.raw.mut_store().set_hard_state(hs, &mut log_batch);
            }
            must_sync |= ready.must_sync();
            peer.on_read_states(ready.take_read_states());
            readies.push((id, Some(ready), committed, role));
        }
        for &id in &installed {
            let peer = self.peers.get_mut(&id).expect("an installed peer exists");
            let held = std::mem::take(&mut peer.held_answers);
            output.messages.extend(to_peer_messages(peer, held));
            if !peer.deferred.is_empty() {
                readies.push((id, None, std::mem::take(&mut peer.deferred), None));
            }
        }
        // Targets whose apply waited at a commit of a merge try again (unless a Ready of
        // theirs above took the waiting entries already).
        for id in std::mem::take(&mut self.merge_retry) {
            let Some(peer) = self.peers.get_mut(&id) else { continue };
            if peer.installing.is_none() && !peer.deferred.is_empty() {
                readies.push((id, None, std::mem::take(&mut peer.deferred), None));
            }
        }
        // A target's snapshot from after a merge covers the frozen source's replica here:
        // the source goes in the same batch as the snapshot's Raft state (its data is
        // cleared before the snapshot's goes in). Apart, a crash in between could leave
        // the target's replica before the merge with the source gone, and the merge
        // unappliable here should the target's leader send entries rather than the
        // snapshot again.
        let mut covered_gone = Vec::new();
        for (target_id, region) in covering {
            let absorbed = self.peers[&target_id].raw.store().absorbed().to_vec();
            let covered: Vec<u64> = (self.peers.iter())
                .filter(|(_, p)| self.gives_way(p, &region, &absorbed))
                .filter(|(_, p)| overlaps(&p.region, &region))
                .map(|(id, _)| *id)
                .collect();
            for id in covered {
                tracing::info!(
                    group = id,
                    target = target_id,
                    "merged: the target's snapshot covers it"
                );
                if let Some(source) = self.peers.get_mut(&id) {
                    // The Region that absorbed it (`gives_way` asked for proof): the
                    // snapshot's, or (an obsolete source covered by a piece split off its
                    // target since) the one its prepare named. Recorded as the
                    // snapshot's, a later snapshot of that piece, which never absorbed it,
                    // was refused here for good (`predates_a_merge_here`; simulator seed
                    // 131000190).
                    if source.absorbed_by == 0 {
                        let named = source.merging.as_ref().map(|state| state.target_id());
                        source.absorbed_by = named.unwrap_or(target_id);
                    }
                }
                covered_gone.extend(self.destroy_into(id, &mut log_batch)?);
            }
        }
        for (id, _, _, role) in &readies {
            if let Some(role) = role {
                self.on_role_change(*id, *role);
            }
        }
        if readies.is_empty() {
            self.remark(visiting.iter().chain(&installed));
            output.events.append(&mut self.events);
            return Ok(output);
        }
        for id in handing_over {
            // Readers must see the lease gone before the TimeoutNow can be received.
            self.publish(id);
        }
        if !output.messages.is_empty() {
            send(std::mem::take(&mut output.messages));
        }
        if !log_batch.is_empty() {
            let started = std::time::Instant::now();
            self.engine.write(log_batch)?;
            output.timings.append = Some(started.elapsed());
        }
        if must_sync {
            let started = std::time::Instant::now();
            self.engine.sync()?;
            output.timings.sync = Some(started.elapsed());
        }
        for destroyed in covered_gone {
            self.after_destroy(destroyed)?;
        }
        let applying = std::time::Instant::now();
        let mut persisted = Vec::new();
        for (id, ready, _, _) in &mut readies {
            let Some(ready) = ready else { continue };
            // (A source superseded by its target's snapshot above: gone.)
            let Some(peer) = self.peers.get_mut(id) else { continue };
            let messages = ready.take_persisted_messages();
            if peer.installing.is_some() {
                // This round installed a snapshot's Raft state: its acknowledgement goes
                // once the data is in (see `Peer::held_answers`).
                peer.held_answers.extend(messages);
                continue;
            }
            persisted.extend(to_peer_messages(peer, messages));
        }
        if !persisted.is_empty() {
            send(persisted);
        }

        let mut apply_batch = WriteBatch::new();
        let mut post: Vec<PostApply> = Vec::new();
        let mut new_regions = Vec::new();
        let mut removed = Vec::new();
        let mut touched = Vec::with_capacity(readies.len());
        let lease_ms = self.config.lease_ms();
        // Sources absorbed by their targets this round, and sources frozen this round.
        let (mut absorbed, mut frozen) = (Vec::new(), Vec::new());
        // Sources a waiting commit looked at: they may have entries of their own to apply.
        let mut nudged = Vec::new();
        for (id, ready, mut entries, _) in readies {
            let Store {
                peers,
                meta,
                config,
                events,
                store_id,
                now_ms,
                beat_targets,
                beat_targets_stale,
                merging,
                merge_waiting,
                ..
            } = self;
            let now_ms = *now_ms;
            // Absorbed by its target earlier in this round: its entries were applied then.
            let Some(peer) = peers.get_mut(&id) else { continue };
            // Not `advance`, which counts every entry handed out as applied: a target
            // whose apply waits at a merge's commit holds entries back, and its applied
            // index is reported below, as it is (simulator seed 1498: a waiting target's
            // next Ready moved raft-rs's applied index past the entries held back, and
            // reporting the real one then panicked).
            let mut light = match ready {
                Some(ready) => peer.raw.advance_append(ready),
                None => raft::LightReady::default(),
            };
            if let Some(commit) = light.commit_index() {
                peer.raw.mut_store().set_commit(commit, &mut apply_batch);
            }
            let messages = light.take_messages();
            // Published with the rest of the round, before its messages go out.
            peer.note_outgoing(&messages);
            output.messages.extend(to_peer_messages(peer, messages));
            entries.extend(light.take_committed_entries());
            if peer.installing.is_some() {
                // Committed with the snapshot: applied once its data is in.
                peer.deferred = entries;
                touched.push(id);
                continue;
            }
            if peer.lingering.is_some() {
                // Removed: it keeps its log for its votes and applies nothing more.
                touched.push(id);
                continue;
            }
            if entries.is_empty() {
                touched.push(id);
                continue;
            }
            // A commit of a merge needs the source's replica here beside the target's:
            // taken aside now, and put back below unless the merge absorbed it.
            let mut source = (entries.iter().find_map(merge::commit_source))
                .filter(|source| *source != id)
                .and_then(|source| peers.remove(&source));
            let peer = peers.get_mut(&id).expect("peer of a ready exists");
            let mut pending = entries.into_iter();
            while let Some(entry) = pending.next() {
                if entry.index <= peer.raw.store().apply_state().applied_index {
                    // Applied already, by a merge's catch-up that its target then refused.
                    continue;
                }
                let mut committed = None;
                if let Some(source_id) = merge::commit_source(&entry) {
                    let meta = meta.as_mut();
                    let batch = &mut apply_batch;
                    let absorbed = &mut absorbed;
                    match commit_merge(
                        peer,
                        &mut source,
                        source_id,
                        meta,
                        &entry,
                        batch,
                        &mut post,
                        absorbed,
                    ) {
                        CommitStep::Wait(why) => {
                            // Looked at again every tick while it waits: not at info.
                            tracing::debug!(
                                group = id,
                                source = source_id,
                                why,
                                "a commit of a merge waits for the source's replica"
                            );
                            peer.deferred = std::iter::once(entry).chain(pending).collect();
                            merge_waiting.insert(id);
                            // It may have been given entries to apply by itself.
                            nudged.push(source_id);
                            break;
                        }
                        CommitStep::Done(result) => committed = Some(result),
                    }
                }
                let proposal = peer.take_proposal(entry.index, entry.term);
                let (callback, command) = match proposal {
                    Some(p) => {
                        if p.term == peer.raw.raft.term {
                            peer.renew_lease(p.proposed_ms, lease_ms);
                        }
                        (Some(p.callback), p.command)
                    }
                    None => (None, None),
                };
                let observe = callback.is_none();
                let result = match committed {
                    Some(result) => result,
                    None => {
                        let meta = meta.as_mut();
                        let applied =
                            apply_entry(peer, meta, &entry, command, observe, &mut apply_batch);
                        outcome(peer, applied, &mut post)
                    }
                };
                match &result {
                    Ok(ApplyOutput::Merge(region)) => {
                        events.push(Event::RegionChanged(region.clone()));
                        if let Some(source) = merge::commit_source(&entry) {
                            post.push(PostApply::Merged(region.clone()));
                            let (is_leader, term) = (peer.is_leader(), peer.raw.raft.term);
                            events.push(Event::Merged { target: id, source, is_leader, term });
                        }
                        if peer.merging.is_some() {
                            merging.insert(id);
                            frozen.push(id);
                        } else {
                            merging.remove(&id);
                        }
                    }
                    Ok(ApplyOutput::Split { left, new }) => {
                        let (kept, share) = peer.stats.split(new.len() as u64);
                        peer.stats = kept;
                        let led = peer.is_leader();
                        new_regions.extend(new.iter().map(|r| (r.clone(), led, share)));
                        events.push(Event::RegionChanged(left.clone()));
                    }
                    Ok(ApplyOutput::ConfChanged(region)) => {
                        beat_targets.extend(region.peers.iter().map(|p| p.store_id));
                        *beat_targets_stale = true;
                        events.push(Event::RegionChanged(region.clone()));
                        if region.peer_on_store(*store_id).is_none_or(|p| p.id != peer.meta.id) {
                            // Each change moves the version on by one.
                            let member_conf_ver = region.conf_ver - 1;
                            removed.push((id, member_conf_ver, region.clone()));
                        }
                    }
                    _ => {}
                }
                peer.raw.mut_store().set_applied(entry.index, entry.term);
                if let Some(callback) = callback {
                    post.push(PostApply::Reply((callback, result)));
                }
            }
            if let Some(source) = source.take() {
                peers.insert(source.region.id, source);
            }
            let peer = peers.get_mut(&id).expect("peer of a ready exists");
            if let Some((_, member_conf_ver, region)) = removed.iter().rfind(|(r, ..)| *r == id) {
                // Removed: it lingers (`linger`, after this batch, clears its data). Its
                // record goes in the batch that applies the removal, which writes a
                // Region without it: a crash between the two left a replica a restart
                // did not start, whose next vote came from an empty log.
                let lingering =
                    Lingering::new(peer.meta.id, *member_conf_ver, region.conf_ver, &region.peers);
                let conf_state = ConfStateRecord::from(peer.raw.store().conf_state());
                write_lingering(&mut apply_batch, region, &conf_state, peer.meta.id, &lingering);
            }
            let storage = peer.raw.mut_store();
            storage.persist_apply_state(&mut apply_batch);
            if let Some(index) = compact_target(peer, config, now_ms) {
                if peer.is_leader() && tracing::enabled!(tracing::Level::DEBUG) {
                    let behind: Vec<u64> = (peer.raw.raft.prs().iter())
                        .filter(|(_, pr)| pr.matched < index)
                        .map(|(id, _)| *id)
                        .collect();
                    if !behind.is_empty() {
                        let group = peer.region.id;
                        tracing::debug!(group, index, ?behind, "log truncated past followers");
                    }
                }
                peer.raw.mut_store().compact_to(index, &mut apply_batch);
            }
            touched.push(id);
        }
        let mut starts = Vec::with_capacity(new_regions.len());
        for (region, _, _) in &new_regions {
            let start = self.split_start(region)?;
            if let SplitStart::Start { term, vote, .. } = start {
                write_split_group(&mut apply_batch, region, term, vote);
            }
            starts.push(start);
        }
        self.engine.write(apply_batch)?;
        output.timings.apply = Some(applying.elapsed());
        for source in absorbed {
            self.forget_absorbed(source);
        }
        for source in nudged {
            if self.peers.get(&source).is_some_and(|p| p.raw.has_ready()) {
                self.dirty.insert(source);
            }
        }
        for id in &touched {
            // (Absorbed by its target: gone.)
            let Some(peer) = self.peers.get_mut(id) else { continue };
            if peer.lingering.is_some() {
                // It applies nothing more: what it was handed counts as applied.
                peer.raw.advance_apply();
                continue;
            }
            let applied = peer.raw.store().apply_state().applied_index;
            // A source replica caught up for a merge its target then refused has applied
            // entries its own log does not know are committed yet: raft-rs hears of them
            // as they are.
            let log = &peer.raw.raft.raft_log;
            peer.raw.advance_apply_to(applied.min(log.committed).min(log.persisted));
            peer.after_apply(applied);
            peer.complete_reads(lease_ms);
            if peer.is_leader() && !peer.raw.store().conf_state().voters_outgoing.is_empty() {
                // Entered a joint configuration: leave it as soon as possible.
                if !peer.raw.raft.has_pending_conf() {
                    let _ = peer.raw.propose_conf_change(Vec::new(), conf_change::leave_joint());
                }
            }
        }
        for item in post {
            match item {
                PostApply::Reply((callback, result)) => callback(result),
                PostApply::Observe(region, command) => self.observer.on_applied(&region, &command),
                PostApply::Merged(region) => self.observer.on_merged(&region),
            }
        }
        for (id, member_conf_ver, region) in removed {
            self.linger(id, member_conf_ver, (region.conf_ver, &region.peers), None)?;
        }
        for ((region, campaign, stats), start) in new_regions.into_iter().zip(starts) {
            let id = region.id;
            self.start_split_peer(region, start, campaign, stats)?;
            touched.push(id);
        }
        for &id in &touched {
            self.publish(id);
        }
        // A source frozen here whose target's replica here leads is committed at once.
        self.check_merges(frozen);
        self.remark(visiting.iter().chain(&installed).chain(&touched));
        output.events.append(&mut self.events);
        output.messages.append(&mut self.outbox);
        Ok(output)
    }

    /// Marks again, after a round, the groups it looked at that still have work: a
    /// replica installing a snapshot's data keeps its `Ready` for later, and applying
    /// may make more (a joint configuration's leave, a new Region's campaign).
    fn remark<'a>(&mut self, ids: impl Iterator<Item = &'a u64>) {
        for &id in ids {
            self.mark_if_busy(id);
        }
    }

    /// Marks a group if it has work now: for changes that often make none.
    fn mark_if_busy(&mut self, id: u64) {
        if self.peers.get(&id).is_some_and(|p| has_work(p)) {
            self.dirty.insert(id);
        }
    }

    fn on_role_change(&mut self, id: u64, role: StateRole) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        if peer.lingering.is_some() && role == StateRole::Leader {
            // A lingering replica that won an election anyway (one that learnt of its
            // removal from a tombstone still counts itself a voter): with no data, it
            // steps down at once and lets the members elect one of their own.
            let term = peer.raw.raft.term;
            peer.raw.raft.become_follower(term, raft::INVALID_ID);
            tracing::info!(group = id, term, "a lingering replica won an election: it steps down");
            return;
        }
        let is_leader = role == StateRole::Leader;
        if !is_leader {
            peer.on_deposed(self.now_ms);
        }
        if peer.initialized {
            self.events.push(Event::Role { region_id: id, is_leader, term: peer.raw.raft.term });
        }
    }

    /// Writes the next step of the first snapshot install under way, if any; the groups
    /// whose install it finished (durably), which serve their new Region from now on.
    fn advance_install(&mut self) -> Result<Vec<u64>, RaftstoreError> {
        if self.now_ms < self.install_paused_until_ms {
            return Ok(Vec::new());
        }
        let Some(peer) = self.installing.first().and_then(|id| self.peers.get_mut(id)) else {
            return Ok(Vec::new());
        };
        let in_thread = peer.installing.as_ref().is_some_and(|i| i.in_thread());
        if !in_thread && self.engine.write_buffer_bytes() > INSTALL_MAX_WRITE_BUFFER {
            if self.now_ms >= self.install_flush_after_ms {
                self.engine.flush_memtables()?;
                self.install_flush_after_ms = self.now_ms + INSTALL_FLUSH_EVERY_MS;
            }
            self.install_paused_until_ms = self.now_ms + INSTALL_PAUSE_MS;
            return Ok(Vec::new());
        }
        let install = peer.installing.as_mut().expect("found installing");
        if !install.step(&self.engine, &self.stager, INSTALL_STEP_BYTES)? {
            if install.in_thread() {
                // Looked in on again in a while, not at once.
                self.install_paused_until_ms = self.now_ms + INSTALL_PAUSE_MS;
            }
            return Ok(Vec::new());
        }
        let brought = install.written();
        self.engine.sync()?;
        self.stager.release(install.data());
        let (ms, records) = (install.took().as_millis() as u64, brought.put_keys);
        tracing::info!(group = peer.region.id, ms, records, "wrote a snapshot's data");
        peer.installing = None;
        let region = peer.region.clone();
        let id = region.id;
        self.installing.remove(&id);
        self.after_snapshot(region, &brought);
        self.publish(id);
        Ok(vec![id])
    }

    /// After a snapshot's data is in, durably: the replica serves its new Region, whose
    /// records add up to `brought`.
    fn after_snapshot(&mut self, region: Region, brought: &crate::stats::Footprint) {
        if region.id == META_GROUP_ID {
            self.meta.restore(&self.engine);
        } else {
            self.observer.on_replaced(&region);
            if let Some(peer) = self.peers.get_mut(&region.id) {
                // Whatever was counted is gone; the snapshot's records stand for the
                // Region until it is measured. Counted as nothing, a new leader reported a
                // full Region as empty for up to a split-check interval, and balancing by
                // size piled such Regions onto new stores (3 -> 5 nodes ended with
                // replicas 16/16/12/9/9).
                peer.stats.replace(brought);
            }
        }
        tracing::info!(group = region.id, "installed a snapshot");
        self.beat_targets.extend(region.peers.iter().map(|p| p.store_id));
        self.beat_targets_stale = true;
        self.events.push(Event::RegionChanged(region));
    }

    /// Starts the replica on this store of a Region a split applied here created, as
    /// [`Store::split_start`] decided before the split's batch was written.
    fn start_split_peer(
        &mut self,
        region: Region,
        start: SplitStart,
        campaign: bool,
        stats: RegionStats,
    ) -> Result<(), RaftstoreError> {
        let replaces = match start {
            SplitStart::Skip => return Ok(()),
            SplitStart::Start { replaces, .. } => replaces,
        };
        if replaces {
            self.peers.remove(&region.id);
        }
        let conf_state = ConfStateRecord::of_region(&region);
        let refuse_until = self.now_ms + self.config.election_ms();
        if let Some(peer) = self.start_peer(region, &conf_state, campaign)? {
            peer.stats = stats;
            if replaces {
                // The replica it replaces may have answered a leader's heartbeats, which
                // count for that leader's lease; the new one has forgotten that leader,
                // and must not help elect another before the lease has surely run out.
                peer.votes_refused_until_ms = refuse_until;
            }
        }
        Ok(())
    }

    /// Whether the split applied here that created `region` starts its replica on this
    /// store, and with what term and vote. Decided before the split's batch is written,
    /// which writes the new group's state only if it starts: a tombstone, a lingering
    /// replica or a newer one (added since, waiting for its snapshot) of that Region here
    /// stays as it is, on disk too. A replica created here by the new Region's leader or
    /// candidate before the split applied (it has no data) is replaced, and its term and
    /// vote are carried over, from memory or, after a restart, as it persisted them: it
    /// may have voted in the new Region's first election, and forgetting that vote would
    /// let it vote again in the same term, for another candidate, and elect two leaders
    /// of one term.
    fn split_start(&self, region: &Region) -> Result<SplitStart, RaftstoreError> {
        let Some(local) = region.peer_on_store(self.store_id) else {
            return Ok(SplitStart::Skip);
        };
        if self.tombstones.get(&region.id).is_some_and(|&removed| removed >= local.id) {
            return Ok(SplitStart::Skip);
        }
        match self.peers.get(&region.id) {
            Some(existing)
                if existing.initialized
                    || existing.lingering.is_some()
                    || existing.meta.id > local.id =>
            {
                Ok(SplitStart::Skip)
            }
            Some(existing) => {
                let (term, vote) = (existing.raw.raft.term, existing.raw.raft.vote);
                Ok(SplitStart::Start { replaces: true, term, vote })
            }
            None => {
                let (term, vote) = crate::storage::persisted_vote(&self.engine, region.id)?;
                Ok(SplitStart::Start { replaces: false, term, vote })
            }
        }
    }

    /// Destroys the local replica of a group: its log, Raft state and data go, a tombstone
    /// stays. Its pending proposals fail with an unknown outcome: the group may commit
    /// them without this replica.
    fn destroy_peer(&mut self, id: u64) -> Result<(), RaftstoreError> {
        let mut batch = WriteBatch::new();
        let Some(destroyed) = self.destroy_into(id, &mut batch)? else { return Ok(()) };
        self.engine.write(batch)?;
        self.after_destroy(destroyed)
    }

    /// Takes the local replica of a group out and writes its destruction into `batch`
    /// (see [`Store::destroy_peer`]); [`Store::after_destroy`] finishes once that batch is
    /// written.
    fn destroy_into(
        &mut self,
        id: u64,
        batch: &mut WriteBatch,
    ) -> Result<Option<Destroyed>, RaftstoreError> {
        let Some(mut peer) = self.peers.remove(&id) else { return Ok(None) };
        self.beat_targets_stale = true;
        self.dirty.remove(&id);
        self.ticking.remove(&id);
        self.merging.remove(&id);
        self.merge_looks.remove(&id);
        peer.raw.mut_store().destroy(batch);
        self.installing.remove(&id);
        let mut abandoned = peer.installing.take();
        if let Some(install) = &mut abandoned {
            // Before the ranges are cleared: nothing the thread writes shows after this.
            install.stop();
            install.abandon(batch);
            if let Some(old) = &install.pending().old {
                snapshot::clear(&*self.engine.snapshot(), old, batch)?;
            }
        }
        if let Some(data) = peer.pending_snapshot.take() {
            self.stager.discard(data);
        }
        if peer.initialized && id != META_GROUP_ID {
            snapshot::clear(&*self.engine.snapshot(), &peer.region, batch)?;
        }
        // Set only once the merge is known to have committed: a target's snapshot covers
        // the frozen source, or an absorbed member said so.
        let merge = (peer.absorbed_by != 0).then(|| MergeState {
            target: Some(Region { id: peer.absorbed_by, ..Default::default() }),
            ..Default::default()
        });
        if let Some(merge) = &merge {
            self.absorbed_into.insert(id, merge.target_id());
        }
        write_absorbed_tombstone(batch, &peer.region, peer.meta.id, merge.as_ref());
        Ok(Some(Destroyed { peer, abandoned }))
    }

    /// Finishes a destruction once its batch is written: the replica's proposals fail,
    /// its tombstone is known, and it stops serving.
    fn after_destroy(&mut self, destroyed: Destroyed) -> Result<(), RaftstoreError> {
        let Destroyed { mut peer, abandoned } = destroyed;
        let id = peer.region.id;
        if let Some(install) = abandoned {
            self.engine.sync()?;
            self.stager.release(install.data());
        }
        let region_id = peer.region.id;
        peer.fail_all(|| RaftstoreError::OutcomeUnknown { region_id });
        self.tombstones.insert(id, peer.meta.id);
        if peer.lingering.is_none() {
            // A lingering replica stopped serving when it began to linger.
            self.stop_serving(id, peer.initialized.then_some(&peer.region));
        }
        tracing::info!(group = id, peer = peer.meta.id, "destroyed a replica");
        Ok(())
    }

    /// Lets go of a source replica its target absorbed in this round's apply batch (which
    /// wrote its tombstone and kept its data, now the target's).
    fn forget_absorbed(&mut self, mut peer: Peer) {
        let id = peer.region.id;
        self.beat_targets_stale = true;
        for set in [&mut self.dirty, &mut self.ticking, &mut self.merging, &mut self.installing] {
            set.remove(&id);
        }
        self.merge_looks.remove(&id);
        if let Some(data) = peer.pending_snapshot.take() {
            self.stager.discard(data);
        }
        peer.fail_all(|| RaftstoreError::OutcomeUnknown { region_id: id });
        if peer.is_leader() {
            let term = peer.raw.raft.term;
            self.events.push(Event::Role { region_id: id, is_leader: false, term });
        }
        self.tombstones.insert(id, peer.meta.id);
        let target = peer.merging.as_ref().map_or(0, |state| state.target_id());
        self.absorbed_into.insert(id, target);
        self.registry.remove(id);
        self.events.push(Event::Destroyed(id));
        tracing::info!(group = id, peer = peer.meta.id, "absorbed by a merge");
    }

    /// The local replica of a group serves no more (destroyed, or lingering): its status
    /// goes, the observer hears that the data of `region` (if it had any) is gone, and
    /// the server gets [`Event::Destroyed`].
    fn stop_serving(&mut self, id: u64, region: Option<&Region>) {
        if id == META_GROUP_ID {
            self.registry.publish_meta(GroupStatus::default());
        } else {
            self.registry.remove(id);
            if let Some(region) = region {
                self.observer.on_replaced(region);
            }
        }
        self.events.push(Event::Destroyed(id));
    }

    /// Publishes a group's status to the registry.
    fn publish(&self, id: u64) {
        let Some(peer) = self.peers.get(&id) else { return };
        if !peer.initialized || peer.installing.is_some() {
            return;
        }
        let status = status_of(peer, &self.config, self.now_ms);
        if id == META_GROUP_ID {
            self.registry.publish_meta(GroupStatus {
                is_leader: peer.is_leader(),
                ready_for_reads: peer.ready_for_reads(),
                status: Some(status),
            });
            return;
        }
        self.registry.publish(status);
    }

    /// Whether a group's replica here is still writing a snapshot's data (it serves
    /// nothing until done).
    pub fn is_installing(&self, id: u64) -> bool {
        self.peers.get(&id).is_some_and(|p| p.installing.is_some())
    }

    /// What the local replica of a group is doing, in a line, for the simulator's and
    /// tests' failure reports: its shape, and what it may be waiting for.
    pub fn describe(&self, id: u64) -> Option<String> {
        let p = self.peers.get(&id)?;
        let state = p.raw.store().apply_state();
        Some(format!(
            "peer {} v{} c{} [{:?}, {:?}) initialized={} installing={} lingering={} \
             leader={} term={} applied={} truncated={} last={} deferred={} frozen_into={:?} \
             absorbed_by={} waiting_merge={} asleep={} heard={}",
            p.meta.id,
            p.region.version,
            p.region.conf_ver,
            p.region.start_key.escape_ascii().to_string(),
            p.region.end_key.escape_ascii().to_string(),
            p.initialized,
            p.installing.is_some(),
            p.lingering.is_some(),
            p.raw.raft.leader_id,
            p.raw.raft.term,
            state.applied_index,
            state.truncated_index,
            p.raw.store().last_index_value(),
            p.deferred.len(),
            p.merging.as_ref().map(|s| (s.target_id(), s.commit)),
            p.absorbed_by,
            self.merge_waiting.contains(&id),
            !p.sleep.is_awake(),
            p.heard_ms.len(),
        ))
    }

    /// The local replicas overlapping `region` (other than its own), described.
    pub fn describe_overlapping(&self, region: &Region) -> Vec<(u64, String)> {
        (self.peers.iter())
            .filter(|(id, p)| {
                **id != region.id && **id != META_GROUP_ID && overlaps(&p.region, region)
            })
            .flat_map(|(id, p)| [*id, p.absorbed_by])
            .filter_map(|id| Some((id, self.describe(id)?)))
            .collect()
    }

    /// The current status of a group's local replica (for tests and tools).
    pub fn status(&self, id: u64) -> Option<RegionStatus> {
        let (config, now) = (&self.config, self.now_ms);
        let serving = |p: &&Peer| p.initialized && p.installing.is_none();
        self.peers.get(&id).map(|p| &**p).filter(serving).map(|p| status_of(p, config, now))
    }

    /// The Regions led here that are due for a measurement (see [`crate::stats`]), each
    /// with its figures now (the mark to correct against), and one view of the engine
    /// consistent with those figures: every round's writes are in the engine, and its
    /// figures counted, before the next begins.
    pub fn due_for_measuring(
        &self,
        policy: &crate::stats::SplitPolicy,
    ) -> (Vec<(Region, RegionStats)>, Box<dyn scandium_storage::Snapshot>) {
        let due = self
            .peers
            .values()
            .filter(|p| p.initialized && p.installing.is_none())
            .filter(|p| p.region.id != META_GROUP_ID && p.is_leader())
            .filter(|p| p.stats.wants_measuring(policy))
            .map(|p| (p.region.clone(), p.stats))
            .collect();
        (due, self.engine.snapshot())
    }

    /// Corrects a Region's figures with a measurement of `region` taken when they were
    /// `mark`. Ignored if the Region changed shape since (a split: its halves are measured
    /// afresh) or the replica is gone.
    pub fn record_measurement(
        &mut self,
        region: &Region,
        mark: &RegionStats,
        size: u64,
        keys: u64,
    ) {
        let Some(peer) = self.peers.get_mut(&region.id) else { return };
        if peer.region.version != region.version || !peer.initialized {
            return;
        }
        peer.stats.correct(mark, size, keys);
        self.publish(region.id);
    }

    /// A consistent view of the engine as of the last round: every group's applied state.
    pub fn engine_snapshot(&self) -> Box<dyn scandium_storage::Snapshot> {
        self.engine.snapshot()
    }

    /// The applied index of a group's local replica.
    pub fn applied_index(&self, id: u64) -> Option<u64> {
        self.peers.get(&id).map(|p| p.raw.store().apply_state().applied_index)
    }

    /// The leader's view of each peer's replication progress: `(peer id, matched index)`,
    /// and the leader's last index. `None` unless the local replica leads.
    pub fn progress(&self, id: u64) -> Option<(Vec<(u64, u64)>, u64)> {
        let peer = self.peers.get(&id).filter(|p| p.is_leader())?;
        let matched = peer.raw.raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect();
        Some((matched, peer.raw.raft.raft_log.last_index()))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for peer in self.peers.values_mut() {
            let region_id = peer.region.id;
            peer.fail_all(|| RaftstoreError::OutcomeUnknown { region_id });
        }
    }
}

/// Whether a replica has work for a round: a `Ready`, or reads to batch.
fn has_work(peer: &Peer) -> bool {
    peer.has_pending_work() || peer.raw.has_ready()
}

/// A store's looks at the commit of one frozen source (store clock).
#[derive(Clone, Copy, Debug)]
struct MergeLook {
    /// When the store first looked at it.
    first_ms: u64,
    /// When the store last proposed it.
    proposed_ms: Option<u64>,
}

/// Whether `message` is a follower's refusal of an append at or below the index it has
/// already acknowledged to this leader, in this term: an answer overtaken by later ones,
/// which says nothing new. raft-rs 0.7 takes one in probe state and moves the follower's
/// next index below its match (etcd's raft keeps it above), and if the log is truncated
/// there, sends a snapshot the follower does not need. Simulator seed 95007903: a merge's
/// source replica caught up by such a snapshot lost the entries after the prepare's
/// `min_index`, which its store was to carry in the commit.
fn stale_rejection(peer: &Peer, message: &Message) -> bool {
    let raft = &peer.raw.raft;
    message.get_msg_type() == MessageType::MsgAppendResponse
        && message.reject
        && message.request_snapshot == 0
        && message.term == raft.term
        && peer.is_leader()
        && raft.prs().get(message.from).is_some_and(|pr| message.index <= pr.matched)
}

fn overlaps(a: &Region, b: &Region) -> bool {
    (b.end_key.is_empty() || a.start_key < b.end_key)
        && (a.end_key.is_empty() || b.start_key < a.end_key)
}

/// Whether the leader `peer` heard from member `id` within an election timeout (itself:
/// always).
fn reachable(peer: &Peer, id: u64, config: &RaftConfig, now_ms: u64) -> bool {
    let window_ms = config.election_ticks as u64 * config.tick_ms;
    id == peer.meta.id
        || peer.heard_ms.get(&id).is_some_and(|&at| now_ms.saturating_sub(at) <= window_ms)
}

fn status_of(peer: &Peer, config: &RaftConfig, now_ms: u64) -> RegionStatus {
    let heartbeat_ticks = config.heartbeat_ticks;
    let (mut pending_peers, mut down_peers) = (Vec::new(), Vec::new());
    if peer.is_leader() {
        let commit = peer.raw.raft.raft_log.committed;
        for (id, pr) in peer.raw.raft.prs().iter() {
            if *id == peer.meta.id {
                continue;
            }
            let Some(member) = peer.region.peer(*id) else { continue };
            if !reachable(peer, *id, config, now_ms) {
                down_peers.push(member.clone());
            }
            // Receiving a snapshot, or well behind the commit index, or not known to
            // hold anything: a new replica acknowledges nothing until its snapshot is
            // in, and in a young group (commit index under PENDING_LAG) counted as
            // caught up, so a learner was promoted with no data (simulator seed
            // 300896). (Not "any entry behind": under load a healthy follower always
            // has appends in flight. Nor "not replicating": an idle group leaves a
            // caught-up follower probing for ever, as raft-rs sends it nothing new.)
            let behind = pr.matched == 0 || pr.matched + PENDING_LAG < commit;
            if pr.state == ProgressState::Snapshot || behind {
                pending_peers.push(member.clone());
            }
        }
    }
    let raft = &peer.raw.raft;
    let leader_alive =
        peer.is_leader() || (raft.leader_id != 0 && raft.election_elapsed <= 3 * heartbeat_ticks);
    RegionStatus {
        region: peer.region.clone(),
        peer: peer.meta.clone(),
        leader: peer.leader(),
        leader_alive,
        ready_for_reads: peer.ready_for_reads(),
        term: peer.raw.raft.term,
        lease_until_ms: peer.lease_until_ms(),
        pending_peers,
        down_peers,
        stats: peer.stats,
        hibernating: !peer.sleep.is_awake(),
        merging_into: peer.merging.as_ref().map(|m| m.target_id()),
    }
}

/// Whether a change may be proposed now, and if not, why.
fn check_conf_change(
    peer: &Peer,
    changes: &[PeerChange],
    config: &RaftConfig,
    now_ms: u64,
) -> Result<(), String> {
    if peer.raw.raft.has_pending_conf() {
        return Err("another membership change is in progress".into());
    }
    let cs = peer.raw.store().conf_state();
    if !cs.voters_outgoing.is_empty() {
        return Err("the group is in a joint configuration".into());
    }
    if changes.is_empty() {
        return Err("no change given".into());
    }
    let mut voters: Vec<u64> = cs.voters.clone();
    for change in changes {
        let id = change.peer().id;
        match change {
            PeerChange::Remove(p) if p.id == peer.meta.id => {
                return Err("the leader cannot remove itself; transfer leadership first".into());
            }
            PeerChange::Remove(_) => voters.retain(|v| *v != id),
            PeerChange::AddLearner(_) if cs.voters.contains(&id) => {
                return Err(format!("peer {id} is a voter; demotion is not supported"));
            }
            PeerChange::AddLearner(_) | PeerChange::AddVoter(_) => {
                if change.peer().store_id == 0 {
                    return Err(format!("peer {id} names no store"));
                }
                if peer
                    .region
                    .peers
                    .iter()
                    .any(|p| p.store_id == change.peer().store_id && p.id != id)
                {
                    return Err(format!(
                        "store {} already holds a replica",
                        change.peer().store_id
                    ));
                }
                if matches!(change, PeerChange::AddVoter(_)) && !voters.contains(&id) {
                    let learner = cs.learners.contains(&id);
                    if learner && !caught_up(peer, id) {
                        // Promoted before its snapshot is in, it would count towards every
                        // quorum with nothing to give (placement may ask so, after a
                        // change of its leader forgot which learners lag).
                        return Err(format!("learner {id} has not caught up"));
                    }
                    voters.push(id);
                }
            }
        }
    }
    // The new configuration must be able to commit: a quorum of its voters must be peers
    // the leader hears from (a new voter counts only if it has caught up to the commit).
    let healthy = voters.iter().filter(|v| reachable(peer, **v, config, now_ms)).count();
    if healthy < voters.len() / 2 + 1 {
        return Err(format!(
            "only {healthy} of the {} voters after the change are reachable",
            voters.len()
        ));
    }
    Ok(())
}

/// How far behind the leader's log a learner may be and still be promoted.
const PROMOTE_MAX_LAG: u64 = 64;

/// Whether follower `id` of the group `peer` leads holds the log nearly to its end and
/// waits for no snapshot. (A follower in probe counts: raft-rs leaves one probing after a
/// lost message until the next append, which a hibernating group never sends; requiring
/// replication refused a caught-up learner's promotion for good, simulator seed
/// 114000031.)
fn caught_up(peer: &Peer, id: u64) -> bool {
    let raft = &peer.raw.raft;
    let last = raft.raft_log.last_index();
    // It has taken the data (its match reaches the log the leader still holds) and most
    // of the log since.
    let first = raft.raft_log.first_index();
    raft.prs().get(id).is_some_and(|pr| {
        pr.state != ProgressState::Snapshot
            && pr.matched + 1 >= first
            && pr.matched + PROMOTE_MAX_LAG >= last
    })
}

/// How long a leader keeps the log after a snapshot it delivered for a follower it does
/// not hear from: the follower answers nothing while it installs the snapshot (a Region
/// of 1 GiB took 20 s on this machine).
const SNAPSHOT_INSTALL_GRACE_MS: u64 = 60_000;

/// Where to truncate a group's log after a round, if anywhere: a leader keeps what its
/// recently active followers still need, and what follows a snapshot it is sending or
/// recently delivered, up to the size caps; a follower keeps half the threshold.
///
/// A follower taking a snapshot is kept for even when it is not heard from: it answers
/// nothing while it installs, and a leader that truncated past the snapshot meanwhile
/// had to send it another once it was done (a node restarted under load took three in
/// a row before it caught up, in `scripts/failover.sh`).
fn compact_target(peer: &Peer, config: &RaftConfig, now_ms: u64) -> Option<u64> {
    if peer.merging.is_some() {
        // Its log after the least matched index travels in the merge's commit.
        return None;
    }
    let storage = peer.raw.store();
    if storage.log_len() <= config.log_gc_threshold {
        return None;
    }
    let applied = storage.apply_state().applied_index;
    let target = if peer.is_leader() {
        let over_cap = storage.log_len() > config.max_log_entries
            || storage.log_bytes() > config.max_log_bytes;
        let needed = peer
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != peer.meta.id)
            .filter_map(|(id, pr)| match pr.state {
                ProgressState::Snapshot => Some(pr.pending_snapshot),
                _ if reachable(peer, *id, config, now_ms) => Some(pr.matched),
                // It answers nothing while it writes the snapshot's data (its answer to
                // the snapshot goes once the data is in: `Peer::held_answers`).
                _ => peer
                    .snapshots_delivered
                    .get(id)
                    .filter(|&&(_, at)| now_ms.saturating_sub(at) <= SNAPSHOT_INSTALL_GRACE_MS)
                    .map(|&(index, _)| index.max(pr.matched)),
            })
            .min()
            .unwrap_or(applied);
        if over_cap {
            applied
        } else {
            applied.min(needed)
        }
    } else {
        applied.saturating_sub(config.log_gc_threshold / 2)
    };
    // A prepare not applied yet (its proposer's, or any leader's since): the commit it
    // leads to carries the entries after its `min_index`, from whichever replica's log.
    let target = match storage.min_after_applied(merge::prepare_min_index) {
        Some(min_index) => target.min(min_index),
        None => target,
    };
    (target > storage.apply_state().truncated_index).then_some(target)
}

/// Whether the leader `peer` may freeze its Region for a merge now (see
/// [`crate::merge`]), and if so the least index every follower's log holds: every
/// follower within [`merge::MERGE_MAX_LAG`] entries of the leader's log, which still holds
/// them, and no split, merge step or membership change among the entries some follower
/// may not have applied (a replica caught up from carried entries applies no split).
fn check_prepare(peer: &Peer, config: &RaftConfig) -> Result<u64, String> {
    if peer.merging.is_some() {
        return Err(format!("region {} is already frozen for a merge", peer.region.id));
    }
    let raft = &peer.raw.raft;
    if raft.has_pending_conf() || !peer.raw.store().conf_state().voters_outgoing.is_empty() {
        return Err("a membership change is under way".into());
    }
    let last = raft.raft_log.last_index();
    let (mut min_matched, mut min_committed) = (last, raft.raft_log.committed);
    for (id, pr) in raft.prs().iter().filter(|(id, _)| **id != peer.meta.id) {
        if pr.state == ProgressState::Snapshot {
            return Err(format!("peer {id} is taking a snapshot"));
        }
        min_matched = min_matched.min(pr.matched);
        min_committed = min_committed.min(pr.committed_index);
    }
    let max_lag = merge::MERGE_MAX_LAG.min(config.log_gc_threshold / 2).max(1);
    if last - min_matched > max_lag {
        return Err(format!("a follower is {} entries behind", last - min_matched));
    }
    let first = raft.raft_log.first_index();
    if min_matched + 1 < first {
        return Err("the log is truncated past a follower".into());
    }
    if min_committed + 1 < first {
        // The entries it does not know committed are gone from this log: what they hold
        // (a rollback of an earlier merge, say) cannot be checked below.
        return Err("a follower does not know yet that the truncated log is committed".into());
    }
    let low = min_matched.min(min_committed).max(first - 1);
    let entries = raft
        .raft_log
        .entries(low + 1, None, raft::GetEntriesContext::empty(false))
        .map_err(|e| format!("cannot read the log: {e}"))?;
    let mut carried = 0;
    for entry in &entries {
        if entry.get_entry_type() != EntryType::EntryNormal {
            return Err("a membership change is not applied everywhere yet".into());
        }
        if !entry.data.is_empty() {
            let command = RaftCommand::decode(entry.data.as_ref())
                .map_err(|e| format!("undecodable entry {}: {e}", entry.index))?;
            if command.is_admin() {
                return Err("a split or merge step is not applied everywhere yet".into());
            }
        }
        if entry.index > min_matched {
            carried += entry.data.len() as u64;
        }
    }
    if carried > config.max_entry_bytes / 10 * 9 {
        return Err(format!("the {carried} bytes of log to carry are too many"));
    }
    Ok(min_matched)
}

/// The commit of the merge `state` records, proposed to the target: the frozen source and
/// its log after `min_index`, from `source`'s replica here (`None` if it lacks some).
fn commit_command(source: &Peer, state: &MergeState) -> Option<RaftCommand> {
    let storage = source.raw.store();
    let context = raft::GetEntriesContext::empty(false);
    let range = (state.min_index + 1, state.commit + 1);
    let entries = raft::Storage::entries(storage, range.0, range.1, None, context).ok()?;
    let entries = entries
        .into_iter()
        .map(|e| merge::MergeEntry { index: e.index, term: e.term, data: e.data.to_vec() })
        .collect();
    let target = state.target.as_ref()?;
    Some(RaftCommand {
        region_id: target.id,
        conf_ver: target.conf_ver,
        version: target.version,
        commit_merge: Some(Box::new(merge::CommitMerge {
            source: Some(source.region.clone()),
            commit: state.commit,
            entries,
        })),
        ..Default::default()
    })
}

/// Wraps raft-rs messages for the transport, addressed by peer and store.
fn to_peer_messages(peer: &Peer, messages: Vec<Message>) -> Vec<PeerMessage> {
    messages
        .into_iter()
        .filter_map(|message| {
            let Some(to) = peer.peer_by_id(message.to) else {
                tracing::debug!(group = peer.region.id, to = message.to, "no store known for peer");
                return None;
            };
            Some(PeerMessage::raft(&peer.region, peer.meta.clone(), to, message))
        })
        .collect()
}

/// Installs a received snapshot's Raft state into `batch` (log position, configuration,
/// Region) with the record of its data to install ([`PendingInstall`]); the data goes in
/// over the next rounds ([`Store::advance_install`]).
fn install_snapshot(
    peer: &mut Peer,
    snapshot: &raft::prelude::Snapshot,
    batch: &mut WriteBatch,
) -> Result<(), RaftstoreError> {
    let header = SnapshotHeader::decode(snapshot.data.as_ref())
        .map_err(|e| RaftstoreError::InvalidCommand(format!("snapshot header: {e}")))?;
    let region = header.region.unwrap_or_default();
    let data = peer.pending_snapshot.take().ok_or_else(|| {
        RaftstoreError::InvalidCommand(format!(
            "snapshot of group {} arrived without data",
            region.id
        ))
    })?;
    let old = (peer.initialized && region.id != META_GROUP_ID).then(|| peer.region.clone());
    let pending = PendingInstall {
        region: Some(region.clone()),
        old,
        staging_id: data.staging_id,
        chunks: data.chunks,
    };
    batch.put(Cf::RaftState, keys::install_key(region.id), pending.encode_to_vec());
    peer.installing = Some(Box::new(Install::new(pending)));
    let conf_state = ConfStateRecord::from(snapshot.get_metadata().get_conf_state());
    peer.raw.mut_store().apply_snapshot(snapshot, region.clone(), batch);
    write_merging_state(batch, &region, &conf_state, None, &header.absorbed);
    peer.raw.mut_store().set_absorbed(header.absorbed);
    // A frozen Region gives no snapshot: this one is of a Region thawed since, or of
    // another that absorbed it.
    peer.merging = None;
    peer.raw.mut_store().set_frozen(false);
    peer.known_peers.retain(|id, _| region.peer(*id).is_none());
    peer.region = region.clone();
    if let Some(local) = region.peer(peer.meta.id) {
        peer.meta = local.clone();
    }
    peer.initialized = true;
    let metadata = snapshot.get_metadata();
    peer.on_snapshot_installed(metadata.index, metadata.term);
    Ok(())
}

/// The snapshots whose data was not all in when the node stopped, by group.
fn pending_installs(
    snapshot: &dyn scandium_storage::Snapshot,
) -> Result<BTreeMap<u64, PendingInstall>, RaftstoreError> {
    let mut installs = BTreeMap::new();
    let prefix = keys::INSTALL_PREFIX;
    for item in snapshot.scan(Cf::RaftState, &[prefix], &[prefix + 1], false) {
        let (key, value) = item?;
        let pending = PendingInstall::decode(value.as_slice()).map_err(|e| {
            scandium_storage::StorageError::Corrupted { cf: Cf::RaftState, reason: e.to_string() }
        })?;
        let group = pending.region.as_ref().map_or(0, |r| r.id);
        debug_assert_eq!(keys::install_key(group), key);
        installs.insert(group, pending);
    }
    Ok(installs)
}

/// What applying one entry produced.
enum Outcome {
    /// A data write, applied; the command, if kept for observers.
    Data(Option<RaftCommand>),
    /// Anything else, with its output.
    Done(ApplyOutput),
}

/// Applies one committed entry of `peer`'s group, adding its writes to `batch`. `local` is
/// the entry's command when this node proposed it (see [`EncodedCommand`]); with
/// `observe`, a write's command is kept for the observer.
fn apply_entry(
    peer: &mut Peer,
    meta: &mut dyn MetaStateMachine,
    entry: &Entry,
    local: Option<RaftCommand>,
    observe: bool,
    batch: &mut WriteBatch,
) -> Result<Outcome, RaftstoreError> {
    if entry.get_entry_type() != EntryType::EntryNormal {
        return apply_conf_change(peer, entry, batch)
            .map(|r| Outcome::Done(ApplyOutput::ConfChanged(r)));
    }
    if entry.data.is_empty() {
        // A new leader's empty entry.
        return Ok(Outcome::Done(ApplyOutput::Written));
    }
    if peer.region.id == META_GROUP_ID {
        return Ok(Outcome::Done(ApplyOutput::Meta(meta.apply(entry.index, &entry.data, batch))));
    }
    let command = match local {
        Some(command) => command,
        None => RaftCommand::decode(entry.data.as_ref())
            .map_err(|e| RaftstoreError::InvalidCommand(format!("undecodable command: {e}")))?,
    };
    let kept = (observe && !command.is_admin()).then(|| command.clone());
    if let Some(prepare) = &command.prepare_merge {
        return apply_prepare_merge(peer, &command, prepare, entry.index, batch);
    }
    if let Some(rollback) = &command.rollback_merge {
        return apply_rollback_merge(peer, rollback, batch);
    }
    if command.commit_merge.is_some() {
        // Applied as such only where its context marks it (see `commit_merge`).
        return Err(RaftstoreError::InvalidCommand("an unmarked commit of a merge".into()));
    }
    if peer.merging.is_some() {
        // Frozen: a write or split proposed before the prepare and committed after it.
        return Err(RaftstoreError::EpochNotMatch { current: vec![peer.region.clone()] });
    }
    if command.is_split() {
        // Tests hold one store's apply of a split (`apply_split_<store id>` = "pause")
        // while the rest of the cluster moves on.
        fail::fail_point!(&format!("apply_split_{}", peer.meta.store_id));
    }
    match apply_command(&peer.region, command, batch)? {
        Applied::Written(footprint) => {
            peer.stats.apply(&footprint);
            Ok(Outcome::Data(kept))
        }
        Applied::Split { left, new } => {
            let conf_state = ConfStateRecord::from(peer.raw.store().conf_state());
            let absorbed = peer.raw.store().absorbed();
            // The new Regions' state goes into the same batch, once the store has decided
            // whether to start their replicas here (`Store::split_start`).
            write_merging_state(batch, &left, &conf_state, None, absorbed);
            peer.region = left.clone();
            peer.raw.mut_store().set_region(left.clone(), None);
            Ok(Outcome::Done(ApplyOutput::Split { left, new }))
        }
    }
}

/// The result of an applied entry for its proposer; a write's command goes to the
/// observers.
fn outcome(
    peer: &Peer,
    applied: Result<Outcome, RaftstoreError>,
    post: &mut Vec<PostApply>,
) -> Result<ApplyOutput, RaftstoreError> {
    match applied {
        Ok(Outcome::Data(command)) => {
            if let Some(command) = command {
                post.push(PostApply::Observe(peer.region.clone(), command));
            }
            Ok(ApplyOutput::Written)
        }
        Ok(Outcome::Done(output)) => Ok(output),
        Err(e) => Err(e),
    }
}

/// Freezes a source Region for a merge (see [`crate::merge`]).
fn apply_prepare_merge(
    peer: &mut Peer,
    command: &RaftCommand,
    prepare: &merge::PrepareMerge,
    index: u64,
    batch: &mut WriteBatch,
) -> Result<Outcome, RaftstoreError> {
    if peer.merging.is_some() {
        return Err(RaftstoreError::EpochNotMatch { current: vec![peer.region.clone()] });
    }
    let conf_state = ConfStateRecord::from(peer.raw.store().conf_state());
    if conf_state.is_joint() {
        let reason = format!("region {} is changing its membership", peer.region.id);
        return Err(RaftstoreError::ChangeRefused(reason));
    }
    let (frozen, state) = merge::apply_prepare(&peer.region, command, prepare, index)?;
    write_merging_state(batch, &frozen, &conf_state, Some(&state), peer.raw.store().absorbed());
    peer.region = frozen.clone();
    peer.raw.mut_store().set_region(frozen.clone(), None);
    peer.raw.mut_store().set_frozen(true);
    peer.merging = Some(Box::new(state));
    if !peer.serves_frozen() {
        peer.lease_until_ms = 0;
    }
    tracing::info!(
        group = frozen.id,
        target = peer.merging.as_ref().map_or(0, |s| s.target_id()),
        index,
        "frozen to merge into its neighbour"
    );
    Ok(Outcome::Done(ApplyOutput::Merge(frozen)))
}

/// Thaws a source Region whose merge can no longer commit (see [`crate::merge`]).
fn apply_rollback_merge(
    peer: &mut Peer,
    rollback: &merge::RollbackMerge,
    batch: &mut WriteBatch,
) -> Result<Outcome, RaftstoreError> {
    if peer.merging.as_ref().is_none_or(|state| state.commit != rollback.commit) {
        let reason = format!("region {} has no such merge under way", peer.region.id);
        return Err(RaftstoreError::ChangeRefused(reason));
    }
    let conf_state = ConfStateRecord::from(peer.raw.store().conf_state());
    let mut region = peer.region.clone();
    region.version += 1;
    write_merging_state(batch, &region, &conf_state, None, peer.raw.store().absorbed());
    peer.region = region.clone();
    peer.raw.mut_store().set_region(region.clone(), None);
    peer.raw.mut_store().set_frozen(false);
    peer.merging = None;
    tracing::info!(group = region.id, "merge rolled back: the Region serves again");
    Ok(Outcome::Done(ApplyOutput::Merge(region)))
}

/// Whether `peer`'s log holds, past what it applied, a rollback of a merge, or an entry
/// it cannot read or decode (counted as one).
fn holds_unapplied_rollback(peer: &Peer) -> bool {
    let applied = peer.raw.store().apply_state().applied_index;
    let log = &peer.raw.raft.raft_log;
    if log.last_index() <= applied {
        return false;
    }
    let Ok(entries) = log.entries(applied + 1, None, raft::GetEntriesContext::empty(false)) else {
        return true;
    };
    entries.iter().any(|entry| {
        entry.get_entry_type() != EntryType::EntryNormal
            || !entry.data.is_empty()
                && RaftCommand::decode(entry.data.as_ref())
                    .map_or(true, |command| command.rollback_merge.is_some())
    })
}

/// A replica taken out by [`Store::destroy_into`], until its batch is written.
struct Destroyed {
    peer: Box<Peer>,
    /// The snapshot it was installing, abandoned: its staged data goes once the
    /// abandonment is synced.
    abandoned: Option<Box<Install>>,
}

/// Whether a split applied here starts the replica it names on this store for a new
/// Region (see [`Store::split_start`]).
#[derive(Clone, Copy, Debug)]
enum SplitStart {
    /// Nothing is written or started: a replica of that Region here stays as it is.
    Skip,
    /// The replica starts, at this term and vote (at least the initial term), replacing
    /// the one with no data that a message created here before the split applied.
    Start { replaces: bool, term: u64, vote: u64 },
}

/// What applying a commit of a merge came to.
enum CommitStep {
    /// The source's replica here is not ready (installing a snapshot, or lacking entries
    /// it cannot be caught up from): the target's apply holds at this entry.
    Wait(&'static str),
    /// Applied or refused, as every replica does.
    Done(Result<ApplyOutput, RaftstoreError>),
}

/// Applies a commit of a merge (`entry`, marked as absorbing `source_id`) to the target
/// `target`, with the source's replica here taken aside (`source`): the source is
/// brought to its prepare, then the target takes its range and the source becomes a
/// tombstone, all in `batch`; on success the source's replica moves to `absorbed`.
#[allow(clippy::too_many_arguments)]
fn commit_merge(
    target: &mut Peer,
    source: &mut Option<Box<Peer>>,
    source_id: u64,
    meta: &mut dyn MetaStateMachine,
    entry: &Entry,
    batch: &mut WriteBatch,
    post: &mut Vec<PostApply>,
    absorbed: &mut Vec<Peer>,
) -> CommitStep {
    let command = match RaftCommand::decode(entry.data.as_ref()) {
        Ok(command) => command,
        Err(e) => {
            let error = RaftstoreError::InvalidCommand(format!("undecodable command: {e}"));
            return CommitStep::Done(Err(error));
        }
    };
    let Some(commit) = command.commit_merge.as_ref() else {
        let error = RaftstoreError::InvalidCommand("marked as a commit of a merge".into());
        return CommitStep::Done(Err(error));
    };
    let source_region = match merge::check_commit(&target.region, &command, commit) {
        Ok(region) => region,
        Err(e) => return CommitStep::Done(Err(e)),
    };
    if source_region.id != source_id {
        let error = RaftstoreError::InvalidCommand("the mark names another source".into());
        return CommitStep::Done(Err(error));
    }
    let Some(src) = source.as_deref_mut() else {
        return CommitStep::Wait("the source's replica is not at hand");
    };
    if !src.initialized || src.installing.is_some() || src.lingering.is_some() {
        return CommitStep::Wait("the source's replica has no data, or is installing a snapshot");
    }
    let applied = src.raw.store().apply_state().applied_index;
    if applied < commit.commit {
        let storage = src.raw.store();
        let own = |index: u64| {
            let context = raft::GetEntriesContext::empty(false);
            let found = raft::Storage::entries(storage, index, index + 1, None, context);
            found.ok().and_then(|mut entries| entries.pop())
        };
        let Some(entries) = merge::catch_up_entries(applied, commit, own) else {
            // Its own log holds an entry a catch-up cannot apply (a split, or a merge of
            // its own waiting for its source here). The commit proves the source's log
            // committed through the prepare, and the replica's own entries up to the
            // first carried one are those (its leader had them matched when it froze): it
            // applies them itself, the usual way, and the commit is tried again (as TiKV's
            // catch-up commits the source's log). Simulator seed 135000619: a replica that
            // had not learnt its own merge's commit waited for ever.
            let raft_log = &mut src.raw.raft.raft_log;
            let carried = commit.entries.iter().map(|e| e.index).min();
            let own_end = carried.unwrap_or(commit.commit + 1).saturating_sub(1);
            let own_end = own_end.min(raft_log.last_index());
            if own_end > raft_log.committed {
                raft_log.commit_to(own_end);
                return CommitStep::Wait("the source's replica applies its own log first");
            }
            return CommitStep::Wait("the source's replica lacks entries, or must apply a change");
        };
        for entry in entries {
            let proposal = src.take_proposal(entry.index, entry.term);
            let (callback, local) = match proposal {
                Some(p) => (Some(p.callback), p.command),
                None => (None, None),
            };
            let applied = apply_entry(src, meta, &entry, local, callback.is_none(), batch);
            let result = outcome(src, applied, post);
            src.raw.mut_store().set_applied(entry.index, entry.term);
            if let Some(callback) = callback {
                post.push(PostApply::Reply((callback, result)));
            }
        }
        src.raw.mut_store().persist_apply_state(batch);
        tracing::info!(
            group = source_id,
            from = applied,
            to = commit.commit,
            "caught the source's replica up for its merge"
        );
    }
    let target_id = target.region.id;
    let frozen = (src.merging.as_deref())
        .is_some_and(|state| state.commit == commit.commit && state.target_id() == target_id);
    if !frozen {
        let reason = format!("region {source_id} is not frozen to merge into {target_id}");
        return CommitStep::Done(Err(RaftstoreError::ChangeRefused(reason)));
    }
    let region = merge::merged(&target.region, &src.region);
    let conf_state = ConfStateRecord::from(target.raw.store().conf_state());
    let record = merge::AbsorbedSource { source_id, commit: commit.commit };
    target.raw.mut_store().add_absorbed(record);
    write_merging_state(batch, &region, &conf_state, None, target.raw.store().absorbed());
    target.region = region.clone();
    target.raw.mut_store().set_region(region.clone(), None);
    target.stats.absorb(&src.stats);
    let mut src = source.take().expect("checked above");
    src.raw.mut_store().destroy(batch);
    write_absorbed_tombstone(batch, &src.region, src.meta.id, src.merging.as_deref());
    absorbed.push(*src);
    tracing::info!(
        group = target_id,
        source = source_id,
        version = region.version,
        "absorbed its neighbour"
    );
    CommitStep::Done(Ok(ApplyOutput::Merge(region)))
}

fn apply_conf_change(
    peer: &mut Peer,
    entry: &Entry,
    batch: &mut WriteBatch,
) -> Result<Region, RaftstoreError> {
    let cc = conf_change::decode(entry).map_err(RaftstoreError::InvalidCommand)?;
    let conf_state = peer
        .raw
        .apply_conf_change(&cc)
        .map_err(|e| RaftstoreError::ChangeRefused(e.to_string()))?;
    let record = ConfStateRecord::from(&conf_state);
    let region = conf_change::apply_to_region(&peer.region, &cc, &record);
    // Peers learnt from messages that this configuration settles: members now, or removed
    // (a peer id is never re-added). Kept, a removed store would be beaten for ever.
    let settled = |id: &u64| region.peer(*id).is_some() || peer.region.peer(*id).is_some();
    peer.known_peers.retain(|id, _| !settled(id));
    // When removed peers were last heard from is asked no more: each balancing move left
    // one behind for the replica's life.
    let asked = |id: &u64| region.peer(*id).is_some() || peer.raw.raft.prs().get(*id).is_some();
    peer.heard_ms.retain(|id, _| asked(id));
    let merging = peer.merging.as_deref();
    write_merging_state(batch, &region, &record, merging, peer.raw.store().absorbed());
    peer.region = region.clone();
    peer.raw.mut_store().set_region(region.clone(), Some(&record));
    if let Some(local) = region.peer(peer.meta.id) {
        peer.meta = local.clone();
    }
    tracing::info!(
        group = region.id,
        conf_ver = region.conf_ver,
        voters = ?record.voters,
        learners = ?record.learners,
        joint = record.is_joint(),
        "membership changed"
    );
    Ok(region)
}
