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
}
