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
//! * Data Regions carry [`RaftCommand`]s: write batches computed by the layers above, or a
//!   split. The placement group carries opaque commands that a [`MetaStateMachine`]
//!   supplied by the server applies.
//! * [`Registry`] publishes each Region's range, epoch and leadership to request handlers.
//!
//! The crate is synchronous; the server owns the thread that drives the store.

pub mod apply;
pub mod bootstrap;
pub mod command;
pub mod error;
pub mod keys;
pub mod logger;
pub mod peer;
pub mod registry;
pub mod state;
pub mod storage;
pub mod store;

pub use command::{EncodedCommand, RaftCommand, SplitRequest};
pub use error::RaftstoreError;
pub use peer::RaftConfig;
pub use registry::{GroupStatus, RegionStatus, Registry};
pub use store::{RoundOutput, Store};

use scandium_storage::WriteBatch;
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
        /// The original Region, now ending at the split key.
        left: Region,
        /// The new Region.
        right: Region,
    },
    /// The placement state machine's answer to a placement command.
    Meta(Box<dyn Any + Send>),
}

impl std::fmt::Debug for ApplyOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyOutput::Written => write!(f, "Written"),
            ApplyOutput::Split { left, right } => write!(f, "Split({}, {})", left.id, right.id),
            ApplyOutput::Meta(_) => write!(f, "Meta"),
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
}
