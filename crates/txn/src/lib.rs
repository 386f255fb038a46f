//! The command layer between the wire and the raftstore: what a request means for the
//! data, computed against a snapshot into a write batch that the raftstore then replicates.
//!
//! * [`raw`]: the raw key-value API: values with TTL, reads that hide expired keys, scans,
//!   compare-and-swap, checksums.
//! * [`mvcc`]: multi-version storage for transactions (locks, commit records, values).
//! * [`actions`]: Percolator's actions (prewrite, commit, rollback, status checks, lock
//!   resolution, pessimistic locks, GC) as pure functions over a snapshot.
//! * [`concurrency`]: the highest read timestamp and in-memory locks that keep async
//!   commit and one-phase commit correct.
//! * [`latches`]: serialise commands touching the same keys, so that a command's reads and
//!   the write it proposes are atomic with respect to every other command.
//!
//! Nothing here knows about Raft or the network; the server composes the pieces.

pub mod actions;
pub mod concurrency;
pub mod error;
pub mod latches;
pub mod lock_index;
pub mod mvcc;
pub mod newest_cache;
pub mod raw;

pub use concurrency::ConcurrencyManager;
pub use error::{Result, TxnError};
pub use latches::{LatchGuard, Latches};
pub use lock_index::{IndexFollower, LockHint, LockIndex};
pub use newest_cache::NewestCache;
