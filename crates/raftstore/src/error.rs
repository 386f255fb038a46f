//! Errors of the raftstore, each of which maps to one kvproto region error.

use scandium_storage::StorageError;
use scandium_types::{Peer, Region, RegionId};
use thiserror::Error;

/// Why a proposal or a read was refused, or why a command failed at apply.
#[derive(Debug, Error)]
pub enum RaftstoreError {
    /// No peer of this Region lives on this store.
    #[error("region {0} not found")]
    RegionNotFound(RegionId),
    /// This store's peer is not the Region's leader (or not ready to serve as one yet).
    #[error("peer of region {region_id} is not leader")]
    NotLeader {
        /// The Region asked for.
        region_id: RegionId,
        /// The leader, if known.
        leader: Option<Peer>,
    },
    /// The request's Region epoch is stale; `current` describes the Regions now covering
    /// the old range.
    #[error("region epoch does not match")]
    EpochNotMatch {
        /// Current Regions, for the client's cache.
        current: Vec<Region>,
    },
    /// A key of the request lies outside the Region.
    #[error("key is not in region {}", region.id)]
    KeyNotInRegion {
        /// The offending key.
        key: Vec<u8>,
        /// The Region as it is now.
        region: Box<Region>,
    },
    /// The command is larger than a Raft entry may be.
    #[error("raft entry of {size} bytes exceeds the limit of {limit} bytes")]
    EntryTooLarge {
        /// The Region proposed to.
        region_id: RegionId,
        /// Size of the encoded command.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The command was superseded by a leader change before it committed; its outcome is
    /// "not applied".
    #[error("command was dropped by a leader change")]
    StaleCommand,
    /// The command entered the log, but the replica that proposed it can no longer tell
    /// whether it will commit: it stopped leading and did not hear the outcome in time,
    /// it is being destroyed, or a snapshot replaced the entries around it. The command
    /// may have been applied, or may still be; retrying it may apply it twice.
    #[error(
        "the outcome of the command in region {region_id} is unknown: its proposer lost \
         leadership before learning whether it was committed"
    )]
    OutcomeUnknown {
        /// The Region proposed to.
        region_id: RegionId,
    },
    /// The command is malformed (a programming error of the proposer, or a bad split key).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// A membership change or leader transfer cannot be made now (another change is in
    /// progress, it would remove the leader, or it names an unknown peer); retry later.
    #[error("membership change refused: {0}")]
    ChangeRefused(String),
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl RaftstoreError {
    /// Whether the error promises that the command did not take effect, so that sending
    /// it again cannot apply it twice. Only an unknown outcome and an engine failure (which
    /// may come after the command was written) leave it open; clients retry the others.
    pub fn is_definite(&self) -> bool {
        !matches!(self, RaftstoreError::OutcomeUnknown { .. } | RaftstoreError::Storage(_))
    }
}
