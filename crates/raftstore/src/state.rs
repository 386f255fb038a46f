//! Persistent per-group records, written to [`scandium_storage::Cf::RaftState`].

use scandium_types::Region;

/// Index and term at which every new group's log starts. A group is created with its log
/// "truncated" at this position, already committed and applied, so the initial membership
/// needs no log entry (TiKV uses the same constant).
pub const INIT_INDEX: u64 = 5;
/// See [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// Raft's hard state plus the index of the last log entry; written with the entries in the
/// same batch, so they always agree.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RaftLocalState {
    /// Current term.
    #[prost(uint64, tag = "1")]
    pub term: u64,
    /// Peer voted for in `term` (0 = none).
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    /// Highest index known committed.
    #[prost(uint64, tag = "3")]
    pub commit: u64,
    /// Index of the last entry in the log.
    #[prost(uint64, tag = "4")]
    pub last_index: u64,
}

/// How far a group's state machine has got; written in the same batch as the applied data,
/// so a restart re-applies exactly the entries after `applied_index`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ApplyState {
    /// Last applied log index.
    #[prost(uint64, tag = "1")]
    pub applied_index: u64,
    /// Term of the entry at `applied_index`.
    #[prost(uint64, tag = "2")]
    pub applied_term: u64,
    /// Entries up to here have been deleted from the log.
    #[prost(uint64, tag = "3")]
    pub truncated_index: u64,
    /// Term of the entry at `truncated_index`.
    #[prost(uint64, tag = "4")]
    pub truncated_term: u64,
}

impl ApplyState {
    /// The state of a freshly created group.
    pub fn initial() -> ApplyState {
        ApplyState {
            applied_index: INIT_INDEX,
            applied_term: INIT_TERM,
            truncated_index: INIT_INDEX,
            truncated_term: INIT_TERM,
        }
    }
}

/// Whether a peer is live or has been removed from its Region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum PeerState {
    /// The peer serves its Region.
    Normal = 0,
    /// The peer was removed; its data is gone or going.
    Tombstone = 1,
    /// The peer was removed and its data is gone, but it still votes until every voter
    /// of its Region has applied the removal (see [`crate::linger`]).
    Lingering = 2,
}

/// A peer's view of its own Region (range, epoch, members).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionLocalState {
    /// The Region as this peer last applied it.
    #[prost(message, optional, tag = "1")]
    pub region: Option<Region>,
    /// See [`PeerState`].
    #[prost(enumeration = "PeerState", tag = "2")]
    pub state: i32,
    /// The group's Raft configuration as of the same applied index. Absent in records
    /// written before membership changes existed: then every peer of `region` votes.
    #[prost(message, optional, tag = "3")]
    pub conf_state: Option<ConfStateRecord>,
    /// For a tombstone: the id the destroyed replica had. Messages to it, or to older ids,
    /// are stale.
    #[prost(uint64, tag = "4")]
    pub removed_peer_id: u64,
    /// For a lingering replica (whose id is `removed_peer_id`): what it waits for.
    #[prost(message, optional, tag = "5")]
    pub lingering: Option<crate::linger::Lingering>,
    /// For a Region frozen to merge into a neighbour (see [`crate::merge`]): the merge
    /// under way. For a tombstone: the merge that absorbed it.
    #[prost(message, optional, tag = "6")]
    pub merge_state: Option<crate::merge::MergeState>,
    /// The merges this Region absorbed as the target (see
    /// [`crate::merge::AbsorbedSource`]).
    #[prost(message, repeated, tag = "7")]
    pub absorbed: Vec<crate::merge::AbsorbedSource>,
}

/// raft-rs's `ConfState`, persisted with the Region it describes: raft-rs rebuilds its
/// membership from it at restart and refuses to start if it disagrees with the log.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConfStateRecord {
    /// Voters of the (incoming) configuration.
    #[prost(uint64, repeated, tag = "1")]
    pub voters: Vec<u64>,
    /// Learners.
    #[prost(uint64, repeated, tag = "2")]
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration; non-empty while a joint change is in progress.
    #[prost(uint64, repeated, tag = "3")]
    pub voters_outgoing: Vec<u64>,
    /// Outgoing voters that become learners when the joint change ends.
    #[prost(uint64, repeated, tag = "4")]
    pub learners_next: Vec<u64>,
    /// Whether raft-rs leaves the joint configuration by itself (never set here: the
    /// leader leaves explicitly).
    #[prost(bool, tag = "5")]
    pub auto_leave: bool,
}

impl ConfStateRecord {
    /// The configuration of a Region that is not in a joint change: its learners learn,
    /// every other peer votes.
    pub fn of_region(region: &Region) -> ConfStateRecord {
        let (learners, voters): (Vec<_>, Vec<_>) =
            region.peers.iter().partition(|p| p.is_learner());
        ConfStateRecord {
            voters: voters.iter().map(|p| p.id).collect(),
            learners: learners.iter().map(|p| p.id).collect(),
            ..Default::default()
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every peer the configuration names.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters.iter().chain(&self.learners).chain(&self.voters_outgoing).copied()
    }
}

impl From<&raft::prelude::ConfState> for ConfStateRecord {
    fn from(cs: &raft::prelude::ConfState) -> ConfStateRecord {
        ConfStateRecord {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }
}

impl From<&ConfStateRecord> for raft::prelude::ConfState {
    fn from(record: &ConfStateRecord) -> raft::prelude::ConfState {
        raft::prelude::ConfState {
            voters: record.voters.clone(),
            learners: record.learners.clone(),
            voters_outgoing: record.voters_outgoing.clone(),
            learners_next: record.learners_next.clone(),
            auto_leave: record.auto_leave,
            ..Default::default()
        }
    }
}

impl RegionLocalState {
    /// The persisted configuration, or the one implied by the Region's peers.
    pub fn conf_state(&self) -> ConfStateRecord {
        match (&self.conf_state, &self.region) {
            (Some(cs), _) => cs.clone(),
            (None, Some(region)) => ConfStateRecord::of_region(region),
            (None, None) => ConfStateRecord::default(),
        }
    }
}
