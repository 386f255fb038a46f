//! Multi-Raft: every Region is a Raft group, replicated by raft-rs, persisted on the node's
//! engine; so is the placement group that holds the cluster's metadata.
//!
//! ```text
//!   propose ──► Peer (RawNode) ──► Ready ──► one batch of log writes, one fsync (all groups)
//!                                          └─► committed entries ──► apply batch (data +
//!                                              apply state, atomically) ──► callbacks
//! ```
//!
//! * [`Store`] owns every peer on the node and runs rounds of Ready handling.
//! * [`PeerStorage`](storage::PeerStorage) is raft-rs's `Storage` on the engine.
//! * Data Regions carry [`RaftCommand`]s: write batches computed by the layers above, a
//!   split, or a step of a merge ([`merge`]). The placement group carries opaque commands that a [`MetaStateMachine`]
//!   supplied by the server applies.
//! * [`Registry`] publishes each Region's range, epoch, leadership and lease to request
//!   handlers.
//! * Replicas on other stores exchange [`PeerMessage`]s, which the server's transport
//!   carries; snapshots travel apart, in chunks ([`snapshot`]).
//! * Membership changes ([`PeerChange`]) add learners, promote them, remove peers.
//!
//! The crate is synchronous and owns no clock: the server drives the store from one
//! thread and passes the time in.

pub mod apply;
pub mod bootstrap;
pub mod command;
pub mod conf_change;
pub mod error;
pub mod hibernate;
pub mod keys;
pub mod linger;
pub mod liveness;
pub mod logger;
pub mod merge;
pub mod message;
pub mod peer;
pub mod registry;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod storage;
pub mod store;

pub use command::{EncodedCommand, RaftCommand, SplitRequest};
pub use conf_change::PeerChange;
pub use error::RaftstoreError;
pub use message::PeerMessage;
pub use peer::{RaftConfig, ReadCallback};
pub use registry::{GroupStatus, Led, RegionStatus, Registry};
pub use snapshot::{SnapshotData, SnapshotSources};
pub use stats::{measure, Measurement, RegionStats, SplitPolicy};
pub use store::{Event, RoundOutput, StepError, Store};

use scandium_storage::{EngineRef, WriteBatch};
use scandium_types::Region;
use std::any::Any;

/// Group id of the placement ("meta") group. Region ids come from the placement id
/// allocator, which never reaches this value.
pub const META_GROUP_ID: u64 = u64::MAX;

/// What an applied command produced, handed to its proposer.
pub enum ApplyOutput {
    /// A write batch was applied.
    Written,
    /// A Region was split.
    Split {
        /// The original Region, now ending at the first cut.
        left: Region,
        /// The new Regions, one starting at each cut, in key order.
        new: Vec<Region>,
    },
    /// The placement state machine's answer to a placement command.
    Meta(Box<dyn Any + Send>),
    /// The membership changed; the Region as it is now.
    ConfChanged(Region),
    /// A step of a merge took effect; the Region as it is now (the source frozen or
    /// thawed, or the target widened).
    Merge(Region),
}

impl std::fmt::Debug for ApplyOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyOutput::Written => write!(f, "Written"),
            ApplyOutput::Split { left, new } => {
                let ids: Vec<u64> = new.iter().map(|r| r.id).collect();
                write!(f, "Split({}, {ids:?})", left.id)
            }
            ApplyOutput::Meta(_) => write!(f, "Meta"),
            ApplyOutput::ConfChanged(region) => write!(f, "ConfChanged({})", region.id),
            ApplyOutput::Merge(region) => write!(f, "Merge({})", region.id),
        }
    }
}

/// Runs once a proposal is applied (or refused). Runs on the Raft thread: it must not block.
pub type Callback = Box<dyn FnOnce(Result<ApplyOutput, RaftstoreError>) + Send>;

/// The placement group's state machine, supplied by the server (the raftstore does not
/// know what placement commands mean).
pub trait MetaStateMachine: Send {
    /// Applies the placement command committed at `index`, adding its persistent effects to
    /// `batch` (written atomically with the group's apply state). Must be deterministic.
    fn apply(&mut self, index: u64, command: &[u8], batch: &mut WriteBatch) -> Box<dyn Any + Send>;

    /// The group's state was replaced by a snapshot, now in `engine`: reload from it.
    fn restore(&mut self, engine: &EngineRef);
}

/// Learns what every replica applies, for in-memory indexes that must follow the data on
/// every replica, not only on the node that proposed a change (the server's lock index
/// and newest-record cache). Runs on the Raft thread after the applied data is written,
/// in log order with the proposers' callbacks: it must not block.
pub trait ApplyObserver: Send {
    /// `command` was applied to `region` and no callback of this node saw it (another
    /// node proposed it, or this node's proposal had been given up).
    fn on_applied(&mut self, region: &Region, command: &RaftCommand);

    /// `region`'s data was replaced wholesale (a snapshot installed, or the replica
    /// destroyed and its data deleted).
    fn on_replaced(&mut self, region: &Region);

    /// `region` (the target) absorbed a neighbour: called on the Raft thread before the
    /// merged Region is published, so that whatever must not serve the union's keys
    /// before it catches up (async commit's `max_ts`) is told before any request can
    /// see the union.
    fn on_merged(&mut self, _region: &Region) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

impl ApplyObserver for NoObserver {
    fn on_applied(&mut self, _: &Region, _: &RaftCommand) {}
    fn on_replaced(&mut self, _: &Region) {}
}
