//! [`Peer`]: one replica of one Raft group, a raft-rs `RawNode` plus the proposals waiting
//! for it to apply them.

use crate::command::RaftCommand;
use crate::error::RaftstoreError;
use crate::storage::PeerStorage;
use crate::Callback;
use raft::{RawNode, StateRole};
use scandium_types::{Peer as PeerMeta, Region};
use std::collections::VecDeque;

/// Raft timing and size settings shared by every group.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest encoded command accepted for proposal, in bytes.
    pub max_entry_bytes: u64,
    /// Applied entries kept in the log before it is truncated.
    pub log_gc_threshold: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_entry_bytes: 8 << 20,
            log_gc_threshold: 256,
        }
    }
}

pub(crate) struct Proposal {
    pub index: u64,
    pub term: u64,
    pub callback: Callback,
    /// The proposed data command, applied instead of decoding the entry.
    pub command: Option<RaftCommand>,
}

/// One replica of a Raft group on this store.
pub struct Peer {
    pub(crate) raw: RawNode<PeerStorage>,
    /// The Region as applied here (for the placement group: a pseudo-Region naming members).
    pub(crate) region: Region,
    pub(crate) meta: PeerMeta,
    pub(crate) proposals: VecDeque<Proposal>,
}

impl Peer {
    pub(crate) fn new(
        storage: PeerStorage,
        region: Region,
        meta: PeerMeta,
        config: &RaftConfig,
        logger: &slog::Logger,
    ) -> Result<Peer, RaftstoreError> {
        let raft_config = raft::Config {
            id: meta.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: storage.apply_state().applied_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = logger.new(slog::o!("group" => region.id, "peer" => meta.id));
        let raw = RawNode::new(&raft_config, storage, &logger)
            .map_err(|e| RaftstoreError::InvalidCommand(format!("cannot start raft peer: {e}")))?;
        Ok(Peer { raw, region, meta, proposals: VecDeque::new() })
    }

    /// Whether this replica is the group's leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Whether the leader has applied an entry of its own term, and therefore everything
    /// committed before it: only then do reads from its state machine see every
    /// acknowledged write.
    pub fn ready_for_reads(&self) -> bool {
        self.is_leader() && self.raw.store().apply_state().applied_term == self.raw.raft.term
    }

    /// The leader's peer, if known.
    pub fn leader(&self) -> Option<PeerMeta> {
        let leader_id = self.raw.raft.leader_id;
        self.region.peers.iter().find(|p| p.id == leader_id).cloned()
    }

    pub(crate) fn propose(
        &mut self,
        data: Vec<u8>,
        command: Option<RaftCommand>,
        callback: Callback,
    ) {
        if !self.is_leader() {
            let error =
                RaftstoreError::NotLeader { region_id: self.region.id, leader: self.leader() };
            return callback(Err(error));
        }
        let before = self.raw.raft.raft_log.last_index();
        if let Err(e) = self.raw.propose(Vec::new(), data) {
            tracing::debug!(group = self.region.id, error = %e, "proposal dropped");
            let error =
                RaftstoreError::NotLeader { region_id: self.region.id, leader: self.leader() };
            return callback(Err(error));
        }
        let index = self.raw.raft.raft_log.last_index();
        if index == before {
            let error =
                RaftstoreError::NotLeader { region_id: self.region.id, leader: self.leader() };
            return callback(Err(error));
        }
        self.proposals.push_back(Proposal { index, term: self.raw.raft.term, callback, command });
    }

    /// Takes the proposal of entry `(index, term)`, failing those that the log skipped
    /// over (their entries were replaced by a new leader's). An index and a term name one
    /// entry, so the proposal's command is the entry's.
    pub(crate) fn take_proposal(&mut self, index: u64, term: u64) -> Option<Proposal> {
        while let Some(front) = self.proposals.front() {
            if front.index > index {
                return None;
            }
            let proposal = self.proposals.pop_front()?;
            if proposal.index == index && proposal.term == term {
                return Some(proposal);
            }
            (proposal.callback)(Err(RaftstoreError::StaleCommand));
        }
        None
    }

    /// Fails every pending proposal (the peer is going away).
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> RaftstoreError) {
        for proposal in self.proposals.drain(..) {
            (proposal.callback)(Err(error()));
        }
    }
}
