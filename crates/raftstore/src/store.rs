//! [`Store`]: every Raft group replica on this node, driven in rounds.
//!
//! A round ([`Store::handle_ready`]) collects the `Ready` of every group that has one,
//! writes all their new log entries and hard states in one batch with one fsync (group
//! commit), then applies every newly committed entry in a second batch that also carries
//! each group's apply state, and finally answers the proposers. Proposals that arrive while
//! a round's fsync is in progress are all persisted by the next round's single fsync.
//!
//! The store is synchronous and owns no thread or clock: the server calls `propose`,
//! `tick` and `handle_ready` from its Raft thread.

use crate::apply::{apply_command, Applied};
use crate::bootstrap::{write_initial_group, write_region_state};
use crate::command::{EncodedCommand, RaftCommand};
use crate::error::RaftstoreError;
use crate::keys;
use crate::logger::raft_logger;
use crate::peer::{Peer, RaftConfig};
use crate::registry::{GroupStatus, RegionStatus, Registry};
use crate::state::{PeerState, RegionLocalState};
use crate::storage::PeerStorage;
use crate::{ApplyOutput, Callback, MetaStateMachine, META_GROUP_ID};
use prost::Message as _;
use raft::prelude::{Entry, EntryType, Message};
use scandium_storage::{Cf, EngineRef, WriteBatch};
use scandium_types::{Region, StoreId};
use std::collections::HashMap;

/// What a round produced for the server to act on.
#[derive(Default)]
pub struct RoundOutput {
    /// Raft messages for peers on other nodes (none while every group has one replica;
    /// the server has no transport for them yet).
    pub messages: Vec<Message>,
}

/// Every Raft group replica on one node.
pub struct Store {
    store_id: StoreId,
    engine: EngineRef,
    config: RaftConfig,
    logger: slog::Logger,
    peers: HashMap<u64, Peer>,
    meta: Box<dyn MetaStateMachine>,
    registry: Registry,
}

type PendingReply = (Callback, Result<ApplyOutput, RaftstoreError>);

impl Store {
    /// Loads every group with a peer on `store_id` from the engine and starts its peer.
    /// Groups with a single voter elect themselves at once.
    pub fn open(
        store_id: StoreId,
        engine: EngineRef,
        config: RaftConfig,
        meta: Box<dyn MetaStateMachine>,
        registry: Registry,
    ) -> Result<Store, RaftstoreError> {
        let mut store = Store {
            store_id,
            engine,
            config,
            logger: raft_logger(),
            peers: HashMap::new(),
            meta,
            registry,
        };
        let snapshot = store.engine.snapshot();
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
                continue;
            }
            let region = state.region.unwrap_or_default();
            debug_assert_eq!(region.id, group_id);
            store.start_peer(region, false)?;
        }
        for id in store.peers.keys().copied().collect::<Vec<_>>() {
            store.publish(id);
        }
        Ok(store)
    }

    fn start_peer(&mut self, region: Region, campaign: bool) -> Result<(), RaftstoreError> {
        let Some(meta) = region.peer_on_store(self.store_id).cloned() else {
            return Ok(());
        };
        let voters = region.peers.iter().map(|p| p.id).collect();
        let storage = PeerStorage::load(self.engine.clone(), region.id, voters)?;
        let single_voter = region.peers.len() == 1;
        let mut peer = Peer::new(storage, region, meta, &self.config, &self.logger)?;
        if campaign || single_voter {
            peer.raw.campaign().map_err(|e| RaftstoreError::InvalidCommand(e.to_string()))?;
        }
        self.peers.insert(peer.region.id, peer);
        Ok(())
    }

    /// Ids of the groups with a replica here (including the placement group).
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
        match self.peers.get_mut(&group_id) {
            Some(peer) => peer.propose(data, command, callback),
            None => callback(Err(RaftstoreError::RegionNotFound(group_id))),
        }
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        for peer in self.peers.values_mut() {
            peer.raw.tick();
        }
    }

    /// Whether any group has work for [`Store::handle_ready`].
    pub fn has_ready(&self) -> bool {
        self.peers.values().any(|p| p.raw.has_ready())
    }

    /// Runs one round: persist (one fsync), apply, answer proposers. See the module docs.
    pub fn handle_ready(&mut self) -> Result<RoundOutput, RaftstoreError> {
        let mut output = RoundOutput::default();
        let mut log_batch = WriteBatch::new();
        let mut readies = Vec::new();
        for (&id, peer) in self.peers.iter_mut() {
            if !peer.raw.has_ready() {
                continue;
            }
            let mut ready = peer.raw.ready();
            output.messages.extend(ready.take_messages());
            if !ready.snapshot().is_empty() {
                return Err(RaftstoreError::InvalidCommand(format!(
                    "group {id} received a snapshot, which this version cannot apply"
                )));
            }
            let committed = ready.take_committed_entries();
            peer.raw.mut_store().append(ready.entries(), &mut log_batch);
            if let Some(hs) = ready.hs() {
                peer.raw.mut_store().set_hard_state(hs, &mut log_batch);
            }
            readies.push((id, ready, committed));
        }
        if readies.is_empty() {
            return Ok(output);
        }
        if !log_batch.is_empty() {
            self.engine.write(log_batch)?;
            self.engine.sync()?;
        }

        let mut apply_batch = WriteBatch::new();
        let mut replies: Vec<PendingReply> = Vec::new();
        let mut new_regions = Vec::new();
        let mut touched = Vec::with_capacity(readies.len());
        for (id, mut ready, mut entries) in readies {
            let Store { peers, meta, config, .. } = self;
            let peer = peers.get_mut(&id).expect("peer of a ready exists");
            output.messages.extend(ready.take_persisted_messages());
            let mut light = peer.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                peer.raw.mut_store().set_commit(commit, &mut apply_batch);
            }
            output.messages.extend(light.take_messages());
            entries.extend(light.take_committed_entries());
            if entries.is_empty() {
                touched.push(id);
                continue;
            }
            for entry in entries {
                let proposal = peer.take_proposal(entry.index, entry.term);
                let (callback, command) = match proposal {
                    Some(p) => (Some(p.callback), p.command),
                    None => (None, None),
                };
                let result = apply_entry(peer, meta.as_mut(), &entry, command, &mut apply_batch);
                if let Ok(ApplyOutput::Split { right, .. }) = &result {
                    new_regions.push((right.clone(), peer.is_leader()));
                }
                peer.raw.mut_store().set_applied(entry.index, entry.term);
                if let Some(callback) = callback {
                    replies.push((callback, result));
                }
            }
            let storage = peer.raw.mut_store();
            storage.persist_apply_state(&mut apply_batch);
            if storage.log_len() > config.log_gc_threshold {
                let applied = storage.apply_state().applied_index;
                storage.compact_to(applied, &mut apply_batch);
            }
            touched.push(id);
        }
        self.engine.write(apply_batch)?;
        for id in &touched {
            let peer = self.peers.get_mut(id).expect("touched peer exists");
            let applied = peer.raw.store().apply_state().applied_index;
            peer.raw.advance_apply_to(applied);
        }
        for (callback, result) in replies {
            callback(result);
        }
        for (region, campaign) in new_regions {
            let id = region.id;
            self.start_peer(region, campaign)?;
            touched.push(id);
        }
        for id in touched {
            self.publish(id);
        }
        Ok(output)
    }

    fn publish(&self, id: u64) {
        let Some(peer) = self.peers.get(&id) else { return };
        if id == META_GROUP_ID {
            self.registry.publish_meta(GroupStatus {
                is_leader: peer.is_leader(),
                ready_for_reads: peer.ready_for_reads(),
            });
            return;
        }
        self.registry.publish(RegionStatus {
            region: peer.region.clone(),
            peer: peer.meta.clone(),
            leader: peer.leader(),
            ready_for_reads: peer.ready_for_reads(),
        });
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for peer in self.peers.values_mut() {
            peer.fail_all(|| RaftstoreError::StaleCommand);
        }
    }
}

/// Applies one committed entry of `peer`'s group, adding its writes to `batch`. `local` is
/// the entry's command when this node proposed it (see [`EncodedCommand`]).
fn apply_entry(
    peer: &mut Peer,
    meta: &mut dyn MetaStateMachine,
    entry: &Entry,
    local: Option<RaftCommand>,
    batch: &mut WriteBatch,
) -> Result<ApplyOutput, RaftstoreError> {
    if entry.get_entry_type() != EntryType::EntryNormal {
        // Membership changes are not proposed yet; skipping keeps every replica identical.
        tracing::error!(group = peer.region.id, index = entry.index, "ignoring conf change entry");
        return Ok(ApplyOutput::Written);
    }
    if entry.data.is_empty() {
        // A new leader's empty entry.
        return Ok(ApplyOutput::Written);
    }
    if peer.region.id == META_GROUP_ID {
        return Ok(ApplyOutput::Meta(meta.apply(entry.index, &entry.data, batch)));
    }
    let command = match local {
        Some(command) => command,
        None => RaftCommand::decode(entry.data.as_ref())
            .map_err(|e| RaftstoreError::InvalidCommand(format!("undecodable command: {e}")))?,
    };
    match apply_command(&peer.region, command, batch)? {
        Applied::Written => Ok(ApplyOutput::Written),
        Applied::Split { left, right } => {
            write_region_state(batch, &left);
            write_initial_group(batch, &right);
            peer.region = left.clone();
            Ok(ApplyOutput::Split { left, right })
        }
    }
}
