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
//! * [`waits`]: lock waits with deadlock detection, and a new leader's `max_ts`.
//! * [`command`]: the logic of every raw and transactional RPC, as sans-I/O state machines
//!   over one node's state ([`TxnNode`]), which the server and the simulator both drive.
//!
//! Nothing here knows about Raft, the network, threads or the clock: commands hand their
//! driver effects (check the Region, wait, propose, ask another Region's leader) and are
//! resumed with the outcome.

pub mod actions;
pub mod command;
pub mod concurrency;
pub mod error;
pub mod latches;
pub mod lock_index;
pub mod mvcc;
pub mod newest_cache;
pub mod node;
pub mod raw;
pub mod waits;
pub mod wake;

pub use command::{Command, CommandError, Effect, Input, Next, Wake};

/// Whether `[start, end)` (empty `end` = unbounded) is inverted: it holds nothing, and a
/// `BTreeMap` range over it panics (a client's `KvScan` from "c" to "b" did, whenever any
/// lock was held on the node).
pub(crate) fn inverted(start: &[u8], end: &[u8]) -> bool {
    !end.is_empty() && start > end
}
pub use concurrency::ConcurrencyManager;
pub use error::{Result, TxnError};
pub use latches::{LatchGuard, Latches};
pub use lock_index::{IndexFollower, LockHint, LockIndex};
pub use newest_cache::NewestCache;
pub use node::{Breakages, NodeSettings, TxnNode};
