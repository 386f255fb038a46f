//! The command layer between the wire and the raftstore: what a request means for the
//! data, computed against a snapshot into a write batch that the raftstore then replicates.
//!
//! * [`raw`]: the raw key-value API: values with TTL, reads that hide expired keys, scans,
//!   compare-and-swap, checksums.
//! * [`latches`]: serialise commands touching the same keys, so that a command's reads and
//!   the write it proposes are atomic with respect to every other command.
//!
//! Nothing here knows about Raft or the network; the server composes the pieces.

pub mod latches;
pub mod raw;

pub use latches::{LatchGuard, Latches};
