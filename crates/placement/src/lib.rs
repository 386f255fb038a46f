//! The embedded placement driver: what TiKV keeps in a separate PD process, Scandium keeps
//! as the state machine of one more Raft group (the placement or "meta" group).
//!
//! * [`PlacementState`] is that state machine: cluster id, stores, Regions, the id
//!   allocator, the timestamp high-water mark, the GC safe point and keyspaces. It is
//!   changed only by applying [`Command`]s committed in the placement group's log, and
//!   persists itself into [`scandium_storage::Cf::Placement`] in the same batch.
//! * [`TsoAllocator`] hands out timestamps on the placement leader, never beyond the
//!   high-water mark the state machine has persisted.
//!
//! Both are pure: no threads, no clock. The server supplies wall time and drives the group.

pub mod command;
pub mod scheduler;
pub mod state;
pub mod tso;

pub use command::{
    Command, Kind, RegionReport, Regions, Reports, Response, ResponseRecord, StoreStateChange,
};
pub use state::{ApplyError, KeyspaceMeta, PlacementState};
pub use tso::{Allocation, LeaderTso, TsoAllocator, TsoError};
