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
//! * [`ControlPlane`] is what the placement leader makes of heartbeats: store liveness
//!   that survives a change of leader, one [`operator`] per Region advanced by its
//!   heartbeats, the [`scheduler`] that decides what each Region should become next.
//!
//! * [`HeartbeatFilter`] is the other end: which Regions a node's heartbeat carries,
//!   so that the placement leader hears of what changed, not of every idle Region.
//!
//! All are pure: no threads, no clock. The server (and the simulator) supply the time,
//! carry heartbeats and steps over their network, and drive the group.

pub mod command;
pub mod control;
pub mod filter;
pub mod merge;
pub mod operator;
pub mod scheduler;
pub mod state;
pub mod tso;

pub use command::{
    Access, Command, Grant, KeyspaceAccess, Kind, LocationLabels, RegionReport, Regions, Reports,
    Response, ResponseRecord, SchedulerSettings, StoreLimit, StoreSeen, StoreStateChange,
    StoresSeen,
};
pub use control::{
    ControlConfig, ControlPlane, Intake, Now, OperatorCounts, RegionHeartbeat, RegionLoad, Wants,
};
pub use filter::{Facts, HeartbeatFilter, Look, Selection};
pub use operator::{OperatorStep, StepAction};
pub use state::{ApplyError, KeyspaceMeta, PlacementState};
pub use tso::{Allocation, LeaderTso, TsoAllocator, TsoError};
