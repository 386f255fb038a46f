//! [`PeerStorage`]: raft-rs's `Storage` over the node's engine.
//!
//! The log lives in [`Cf::RaftLog`]; the hard state, apply state and Region state in
//! [`Cf::RaftState`]. Recent entries are also kept in memory so that replication and apply
//! rarely read the engine. Writes never go to the engine directly: they are added to the
//! [`WriteBatch`] of the current Ready round, so that every group's changes are written
//! together and synced once.

use crate::keys;
use crate::state::{ApplyState, RaftLocalState};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use scandium_storage::{Cf, EngineRef, StorageError, WriteBatch};
use std::collections::VecDeque;

/// Entries kept in memory per group; older ones are read from the engine.
const MAX_CACHED_ENTRIES: usize = 1024;

/// One group's Raft log and state.
pub struct PeerStorage {
    engine: EngineRef,
    group_id: u64,
    raft_state: RaftLocalState,
    apply_state: ApplyState,
    conf_state: ConfState,
    /// Contiguous entries ending at `raft_state.last_index` (or empty).
    cache: VecDeque<Entry>,
}

impl PeerStorage {
    /// Loads a group's state from the engine. The group must have been created (see
    /// [`crate::bootstrap`]).
    pub fn load(
        engine: EngineRef,
        group_id: u64,
        voters: Vec<u64>,
    ) -> Result<PeerStorage, StorageError> {
        let raft_state: RaftLocalState = read_record(&engine, &keys::raft_state_key(group_id))?
            .ok_or_else(|| missing("raft state", group_id))?;
        let apply_state: ApplyState = read_record(&engine, &keys::apply_state_key(group_id))?
            .ok_or_else(|| missing("apply state", group_id))?;
        let mut storage = PeerStorage {
            engine,
            group_id,
            raft_state,
            apply_state,
            conf_state: ConfState::from((voters, vec![])),
            cache: VecDeque::new(),
        };
        // The commit index is persisted lazily; applied entries are certainly committed.
        storage.raft_state.commit =
            storage.raft_state.commit.max(storage.apply_state.applied_index);
        Ok(storage)
    }

    /// The persisted apply state.
    pub fn apply_state(&self) -> &ApplyState {
        &self.apply_state
    }

    /// Index of the last log entry.
    pub fn last_index_value(&self) -> u64 {
        self.raft_state.last_index
    }

    /// Replaces the voters raft-rs sees at restart (after a membership change).
    pub fn set_voters(&mut self, voters: Vec<u64>) {
        self.conf_state = ConfState::from((voters, vec![]));
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

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Only single-replica groups exist so far; nobody can lag behind a truncated log.
        Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable))
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

fn missing(what: &str, group_id: u64) -> StorageError {
    StorageError::Corrupted {
        cf: Cf::RaftState,
        reason: format!("{what} of group {group_id} is missing"),
    }
}

fn to_raft_error(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}
