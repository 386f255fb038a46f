//! [`PeerStorage`]: raft-rs's `Storage` over the node's engine.
//!
//! The log lives in [`Cf::RaftLog`]; the hard state, apply state and Region state in
//! [`Cf::RaftState`]. Recent entries are also kept in memory so that replication and apply
//! rarely read the engine. Writes never go to the engine directly: they are added to the
//! [`WriteBatch`] of the current Ready round, so that every group's changes are written
//! together and synced once.

use crate::keys;
use crate::snapshot::{SnapshotHeader, SnapshotSources};
use crate::state::{ApplyState, ConfStateRecord, RaftLocalState};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use scandium_storage::{Cf, EngineRef, StorageError, WriteBatch};
use scandium_types::Region;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Entries kept in memory per group; older ones are read from the engine.
const MAX_CACHED_ENTRIES: usize = 1024;

/// One group's Raft log and state.
pub struct PeerStorage {
    engine: EngineRef,
    group_id: u64,
    raft_state: RaftLocalState,
    apply_state: ApplyState,
    conf_state: ConfState,
    /// The Region as of the applied index (what a snapshot taken now describes).
    region: Region,
    /// Contiguous entries ending at `raft_state.last_index` (or empty).
    cache: VecDeque<Entry>,
    /// Where outgoing snapshots' engine snapshots wait for the transport.
    snapshots: SnapshotSources,
    /// The store's clock (milliseconds), for stamping snapshots.
    clock: Arc<AtomicU64>,
    /// Bytes appended to the log since it was last truncated (an estimate).
    log_bytes: u64,
    /// The merges the Region absorbed as of the applied index (see
    /// [`crate::merge::AbsorbedSource`]): what a snapshot taken now carries.
    absorbed: Vec<crate::merge::AbsorbedSource>,
    /// The Region is frozen for a merge (see [`crate::merge`]): it gives no snapshot, as
    /// a replica taking one would not be frozen. None needs one: the prepare waits for
    /// every follower to hold the log (and nothing truncates it while frozen).
    frozen: bool,
    /// The replica's data is gone (removed, it lingers for its votes: see
    /// [`crate::linger`]): it gives no snapshot, which would be empty at its index.
    dataless: bool,
}

/// What a [`PeerStorage`] is built from, besides its own records.
#[derive(Clone)]
pub struct StorageContext {
    /// The node's engine.
    pub engine: EngineRef,
    /// Engine snapshots waiting for the transport.
    pub snapshots: SnapshotSources,
    /// The store's clock (milliseconds).
    pub clock: Arc<AtomicU64>,
}

impl PeerStorage {
    /// Loads a group's state from the engine. The group must have been created (see
    /// [`crate::bootstrap`]).
    pub fn load(
        context: &StorageContext,
        region: Region,
        conf_state: &ConfStateRecord,
    ) -> Result<PeerStorage, StorageError> {
        let engine = context.engine.clone();
        let group_id = region.id;
        let raft_state: RaftLocalState = read_record(&engine, &keys::raft_state_key(group_id))?
            .ok_or_else(|| missing("raft state", group_id))?;
        let apply_state: ApplyState = read_record(&engine, &keys::apply_state_key(group_id))?
            .ok_or_else(|| missing("apply state", group_id))?;
        let mut storage = PeerStorage {
            engine,
            group_id,
            raft_state,
            apply_state,
            conf_state: conf_state.into(),
            region,
            cache: VecDeque::new(),
            snapshots: context.snapshots.clone(),
            clock: context.clock.clone(),
            log_bytes: 0,
            absorbed: Vec::new(),
            frozen: false,
            dataless: false,
        };
        // The commit index is persisted lazily; applied entries are certainly committed.
        storage.raft_state.commit =
            storage.raft_state.commit.max(storage.apply_state.applied_index);
        Ok(storage)
    }

    /// The storage of a replica that exists only because a leader or candidate wrote to
    /// it: an empty log (first index 1, last 0), no configuration; of its state only its
    /// term and vote are ever persisted. It can only be initialized by a snapshot (or
    /// replaced by a split creating it).
    pub fn uninitialized(
        context: &StorageContext,
        region_id: u64,
    ) -> Result<PeerStorage, StorageError> {
        // Such a replica may have voted before this node restarted (its Raft state is
        // persisted, its Region state not, so the restart did not start it): its term and
        // vote stay, or it could vote twice in one term and elect two leaders of it.
        let (term, vote) = persisted_vote(&context.engine, region_id)?;
        Ok(PeerStorage {
            engine: context.engine.clone(),
            group_id: region_id,
            raft_state: RaftLocalState { term, vote, ..RaftLocalState::default() },
            apply_state: ApplyState::default(),
            conf_state: ConfState::default(),
            region: Region { id: region_id, ..Default::default() },
            cache: VecDeque::new(),
            snapshots: context.snapshots.clone(),
            clock: context.clock.clone(),
            log_bytes: 0,
            absorbed: Vec::new(),
            frozen: false,
            dataless: false,
        })
    }

    /// The merges the Region absorbed as the target, as of the applied index.
    pub fn absorbed(&self) -> &[crate::merge::AbsorbedSource] {
        &self.absorbed
    }

    /// Whether the Region absorbed Region `source` in a merge (as far as its record
    /// reaches: see [`crate::merge::MAX_ABSORBED`]).
    pub fn has_absorbed(&self, source: u64) -> bool {
        self.absorbed.iter().any(|a| a.source_id == source)
    }

    /// Replaces the record of absorbed merges (persisted by the caller).
    pub fn set_absorbed(&mut self, absorbed: Vec<crate::merge::AbsorbedSource>) {
        self.absorbed = absorbed;
    }

    /// Notes that the replica's data is gone (see `dataless`).
    pub fn set_dataless(&mut self) {
        self.dataless = true;
    }

    /// Freezes or thaws the Region for snapshots (see `frozen`).
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// Records one more absorbed merge (persisted by the caller).
    pub fn add_absorbed(&mut self, source: crate::merge::AbsorbedSource) {
        crate::merge::record_absorbed(&mut self.absorbed, source);
    }

    /// The persisted apply state.
    pub fn apply_state(&self) -> &ApplyState {
        &self.apply_state
    }

    /// The configuration as of the applied index.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records the configuration and Region a change applied (persisted by the caller).
    pub fn set_region(&mut self, region: Region, conf_state: Option<&ConfStateRecord>) {
        if let Some(cs) = conf_state {
            self.conf_state = cs.into();
        }
        self.region = region;
    }

    /// Installs a received snapshot into `batch`: the log is emptied and starts after the
    /// snapshot's index, which becomes the applied (and truncated) position; the caller adds
    /// the data and the Region state to the same batch.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot, region: Region, batch: &mut WriteBatch) {
        let meta = snapshot.get_metadata();
        for stale in self.apply_state.truncated_index + 1..=self.raft_state.last_index {
            batch.delete(Cf::RaftLog, keys::log_key(self.group_id, stale));
        }
        self.cache.clear();
        self.log_bytes = 0;
        self.raft_state.last_index = meta.index;
        self.raft_state.commit = self.raft_state.commit.max(meta.index);
        self.raft_state.term = self.raft_state.term.max(meta.term);
        self.apply_state = ApplyState {
            applied_index: meta.index,
            applied_term: meta.term,
            truncated_index: meta.index,
            truncated_term: meta.term,
        };
        self.conf_state = meta.get_conf_state().clone();
        self.region = region;
        self.write_raft_state(batch);
        self.write_apply_state(batch);
    }

    /// Deletes the group's log and Raft records into `batch` (the replica is destroyed;
    /// the caller writes its tombstone), all but its term and vote: a newer replica of
    /// the group created here later (by a message, or a split replaying the group's
    /// creation after a restart) starts from them, so that this store never votes twice
    /// in one term of the group.
    pub fn destroy(&mut self, batch: &mut WriteBatch) {
        for index in self.apply_state.truncated_index + 1..=self.raft_state.last_index {
            batch.delete(Cf::RaftLog, keys::log_key(self.group_id, index));
        }
        let (term, vote) = (self.raft_state.term, self.raft_state.vote);
        let kept = RaftLocalState { term, vote, ..RaftLocalState::default() };
        batch.put(
            Cf::RaftState,
            keys::raft_state_key(self.group_id),
            prost::Message::encode_to_vec(&kept),
        );
        batch.delete(Cf::RaftState, keys::apply_state_key(self.group_id));
        self.cache.clear();
    }

    /// The least of `f` over the persisted entries after the applied index (the cache
    /// holds them but after a gap or a release; the engine is read then).
    pub fn min_after_applied(&self, f: impl Fn(&Entry) -> Option<u64>) -> Option<u64> {
        let from = self.apply_state.applied_index + 1;
        let last = self.raft_state.last_index;
        if from > last {
            return None;
        }
        if self.cache.front().is_some_and(|e| e.index <= from) {
            return self.cache.iter().filter(|e| e.index >= from).filter_map(f).min();
        }
        let context = GetEntriesContext::empty(false);
        let entries = raft::Storage::entries(self, from, last + 1, None, context);
        entries.unwrap_or_default().iter().filter_map(f).min()
    }

    /// Gives back the memory of the entry cache (a hibernating replica's): entries are
    /// read from the engine until appends fill it again.
    pub fn release_cache(&mut self) {
        self.cache.clear();
        self.cache.shrink_to_fit();
    }

    /// Estimated bytes held by the untruncated log.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Index of the last log entry.
    pub fn last_index_value(&self) -> u64 {
        self.raft_state.last_index
    }

    /// Appends entries from a Ready, replacing any conflicting suffix, into `batch`.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) {
        let Some(first) = entries.first() else { return };
        let first_index = first.index;
        let new_last = first_index + entries.len() as u64 - 1;
        for stale in new_last + 1..=self.raft_state.last_index {
            batch.delete(Cf::RaftLog, keys::log_key(self.group_id, stale));
        }
        while self.cache.back().is_some_and(|e| e.index >= first_index) {
            self.cache.pop_back();
        }
        if self.cache.back().is_some_and(|e| e.index + 1 != first_index) {
            self.cache.clear();
        }
        for entry in entries {
            let bytes = entry.write_to_bytes().expect("encoding an entry cannot fail");
            self.log_bytes += bytes.len() as u64;
            batch.put(Cf::RaftLog, keys::log_key(self.group_id, entry.index), bytes);
            self.cache.push_back(entry.clone());
        }
        while self.cache.len() > MAX_CACHED_ENTRIES {
            self.cache.pop_front();
        }
        self.raft_state.last_index = new_last;
        self.write_raft_state(batch);
    }

    /// Records a new hard state into `batch`.
    pub fn set_hard_state(&mut self, hs: &HardState, batch: &mut WriteBatch) {
        self.raft_state.term = hs.term;
        self.raft_state.vote = hs.vote;
        self.raft_state.commit = hs.commit;
        self.write_raft_state(batch);
    }

    /// Records a new commit index into `batch`.
    pub fn set_commit(&mut self, commit: u64, batch: &mut WriteBatch) {
        if commit > self.raft_state.commit {
            self.raft_state.commit = commit;
            self.write_raft_state(batch);
        }
    }

    /// Notes that entry `index` of `term` is applied; [`PeerStorage::persist_apply_state`]
    /// writes it out once per round.
    pub fn set_applied(&mut self, index: u64, term: u64) {
        self.apply_state.applied_index = index;
        self.apply_state.applied_term = term;
    }

    /// Writes the apply state into `batch`, which must also hold the applied data.
    pub fn persist_apply_state(&self, batch: &mut WriteBatch) {
        self.write_apply_state(batch);
    }

    /// Deletes log entries up to `index` (which must be applied), into `batch`.
    pub fn compact_to(&mut self, index: u64, batch: &mut WriteBatch) {
        let index = index.min(self.apply_state.applied_index);
        if index <= self.apply_state.truncated_index {
            return;
        }
        let term = match self.entry_term(index) {
            Ok(term) => term,
            Err(error) => {
                tracing::warn!(group = self.group_id, index, %error, "cannot compact log");
                return;
            }
        };
        for stale in self.apply_state.truncated_index + 1..=index {
            batch.delete(Cf::RaftLog, keys::log_key(self.group_id, stale));
        }
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache.pop_front();
        }
        let before = self.log_len().max(1);
        let remaining = self.raft_state.last_index - index;
        self.log_bytes = self.log_bytes * remaining / before;
        self.apply_state.truncated_index = index;
        self.apply_state.truncated_term = term;
        self.write_apply_state(batch);
    }

    /// Number of entries not yet truncated.
    pub fn log_len(&self) -> u64 {
        self.raft_state.last_index - self.apply_state.truncated_index
    }

    fn write_raft_state(&self, batch: &mut WriteBatch) {
        let bytes = prost::Message::encode_to_vec(&self.raft_state);
        batch.put(Cf::RaftState, keys::raft_state_key(self.group_id), bytes);
    }

    fn write_apply_state(&self, batch: &mut WriteBatch) {
        let bytes = prost::Message::encode_to_vec(&self.apply_state);
        batch.put(Cf::RaftState, keys::apply_state_key(self.group_id), bytes);
    }

    fn first_index_value(&self) -> u64 {
        self.apply_state.truncated_index + 1
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.cache.front()?.index;
        self.cache.get(usize::try_from(index.checked_sub(first)?).ok()?)
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        if let Some(entry) = self.cached(index) {
            return Ok(entry.clone());
        }
        let key = keys::log_key(self.group_id, index);
        let bytes = self
            .engine
            .get(Cf::RaftLog, &key)
            .map_err(to_raft_error)?
            .ok_or_else(|| to_raft_error(missing("log entry", self.group_id)))?;
        Entry::parse_from_bytes(&bytes)
            .map_err(|e| raft::Error::Store(RaftStorageError::Other(Box::new(e))))
    }

    fn entry_term(&self, index: u64) -> raft::Result<u64> {
        if index == self.apply_state.truncated_index {
            return Ok(self.apply_state.truncated_term);
        }
        if index < self.apply_state.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if index > self.raft_state.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(self.read_entry(index)?.term)
    }
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hs = HardState {
            term: self.raft_state.term,
            vote: self.raft_state.vote,
            commit: self.raft_state.commit,
            ..Default::default()
        };
        Ok(RaftState::new(hs, self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_value() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.raft_state.last_index + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let entry = self.read_entry(index)?;
            size += u64::from(protobuf::Message::compute_size(&entry));
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.entry_term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_value())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.last_index)
    }

    /// A snapshot at the applied index. The engine holds exactly the applied state
    /// whenever raft-rs can call this (between rounds, on the Raft thread), so one engine
    /// snapshot taken now is the Region's data at that index; it waits in
    /// [`SnapshotSources`] for the transport, and the Raft snapshot names it by token.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = &self.apply_state;
        if applied.applied_index < request_index || self.frozen || self.dataless {
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        let now = self.clock.load(Ordering::Relaxed);
        let token = self.snapshots.register(self.region.clone(), self.engine.snapshot(), now);
        let header = SnapshotHeader {
            region: Some(self.region.clone()),
            token,
            absorbed: self.absorbed.clone(),
        };
        let mut snapshot =
            Snapshot { data: prost::Message::encode_to_vec(&header).into(), ..Default::default() };
        let mut meta = SnapshotMetadata {
            index: applied.applied_index,
            term: applied.applied_term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        snapshot.set_metadata(meta);
        Ok(snapshot)
    }
}

/// Reads and decodes a protobuf record from [`Cf::RaftState`].
pub fn read_record<M: prost::Message + Default>(
    engine: &EngineRef,
    key: &[u8],
) -> Result<Option<M>, StorageError> {
    let Some(bytes) = engine.get(Cf::RaftState, key)? else { return Ok(None) };
    M::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| StorageError::Corrupted { cf: Cf::RaftState, reason: e.to_string() })
}

/// The term and vote persisted for a group here, if any (`(0, 0)` if none): what a
/// replica created here again, by a message or a split, starts from.
pub(crate) fn persisted_vote(
    engine: &EngineRef,
    group_id: u64,
) -> Result<(u64, u64), StorageError> {
    let persisted: Option<RaftLocalState> = read_record(engine, &keys::raft_state_key(group_id))?;
    Ok(persisted.map_or((0, 0), |state| (state.term, state.vote)))
}

fn missing(what: &str, group_id: u64) -> StorageError {
    StorageError::Corrupted {
        cf: Cf::RaftState,
        reason: format!("{what} of group {group_id} is missing"),
    }
}

fn to_raft_error(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scandium_storage::MemoryEngine;

    /// A replica whose data is gone (a removed one lingering for its votes) gives no
    /// snapshot: one taken would be empty at its index (simulator seed 98002613, where a
    /// removed candidate won its election and a follower installed such a snapshot).
    #[test]
    fn a_replica_without_its_data_gives_no_snapshot() {
        let context = StorageContext {
            engine: Arc::new(MemoryEngine::new()),
            snapshots: SnapshotSources::default(),
            clock: Arc::new(AtomicU64::new(0)),
        };
        let mut storage = PeerStorage::uninitialized(&context, 7).unwrap();
        assert!(raft::Storage::snapshot(&storage, 0, 2).is_ok());
        storage.set_dataless();
        let refused = raft::Storage::snapshot(&storage, 0, 2);
        let unavailable = raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable);
        assert_eq!(refused.unwrap_err(), unavailable);
    }
}
