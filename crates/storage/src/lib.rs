//! The storage seam: everything above this crate reads and writes through [`Engine`].
//!
//! A node has one engine holding several column families ([`Cf`]): the Raft log and Raft
//! state of every Region, Region metadata, placement metadata, raw key-value data and the
//! three transactional column families. A [`WriteBatch`] is atomic across column families,
//! which is what lets a peer write applied data together with its applied index.
//!
//! Durability is explicit: [`Engine::write`] makes a batch visible and crash-consistent with
//! respect to process death (it is in the OS's hands), and [`Engine::sync`] makes everything
//! written so far survive power loss. The raftstore calls `sync` once per batch of Raft
//! log writes (group commit).
//!
//! Three engines implement the trait: [`FjallEngine`] (the real one, on disk),
//! [`MemoryEngine`] (for tests of the layers above) and [`FaultEngine`] (in memory, losing
//! unsynced writes on a simulated crash and failing on demand: for the simulator).

mod batch;
mod fault;
mod fjall_engine;
mod memory;

pub use batch::{Mutation, WriteBatch};
pub use fault::{FaultEngine, Faults};
pub use fjall_engine::{FjallEngine, FjallOptions};
pub use memory::MemoryEngine;

use std::sync::Arc;
use thiserror::Error;

/// Column families. Each is a separate LSM tree in fjall; together they share one journal,
/// so a batch spanning several of them is atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Raw key-value data, keyed by the key as the client sends it.
    Raw,
    /// Transactional values too large to live inline in a write record.
    Default,
    /// Transactional locks, keyed by user key.
    Lock,
    /// Transactional commit and rollback records, keyed by user key and commit timestamp.
    Write,
    /// Raft log entries of every Raft group, keyed by group id and index.
    RaftLog,
    /// Raft hard state, apply state and Region state of every Raft group on this node.
    RaftState,
    /// The placement group's state machine: stores, Regions, ids, timestamps, keyspaces.
    Placement,
    /// The newest Write record of each transactional key, keyed by user key: a derived
    /// index of the Write CF that turns "the key's latest version" into a point lookup
    /// (fjall has no prefix filters, so a seek positions an iterator in every table).
    Latest,
    /// Raw data a V1 client wrote with column family `lock` (TiKV keeps a raw namespace
    /// per column family in API V1; `tikv-client`'s `with_cf` selects one).
    RawLock,
    /// Raw data a V1 client wrote with column family `write`; see [`Cf::RawLock`].
    RawWrite,
    /// Received snapshots, chunk by chunk, until their Region's replica installs them:
    /// staged on disk so that a Region of any size arrives in bounded memory.
    Staging,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 11] = [
        Cf::Raw,
        Cf::Default,
        Cf::Lock,
        Cf::Write,
        Cf::RaftLog,
        Cf::RaftState,
        Cf::Placement,
        Cf::Latest,
        Cf::RawLock,
        Cf::RawWrite,
        Cf::Staging,
    ];

    /// The column families holding a Region's data (everything but Raft and placement
    /// state): what a split divides, a snapshot carries and a destroyed replica deletes.
    pub const DATA: [Cf; 7] =
        [Cf::Raw, Cf::RawLock, Cf::RawWrite, Cf::Default, Cf::Lock, Cf::Write, Cf::Latest];

    /// The name of the column family on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Raw => "raw",
            Cf::Default => "default",
            Cf::Lock => "lock",
            Cf::Write => "write",
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::Placement => "placement",
            Cf::Latest => "latest",
            Cf::RawLock => "raw_lock",
            Cf::RawWrite => "raw_write",
            Cf::Staging => "snapshot_staging",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Failures of the storage engine. Any of them on a write means the node can no longer
/// guarantee durability and must stop accepting writes.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The underlying engine failed (I/O error, corruption, poisoned after a failed fsync).
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    /// A write named the empty key, which no column family can hold. Callers validate keys
    /// first; this is the last line of defence.
    #[error("empty key written to {0:?}")]
    EmptyKey(Cf),
    /// A stored record could not be decoded.
    #[error("corrupted record in {cf:?}: {reason}")]
    Corrupted {
        /// Where the record lives.
        cf: Cf,
        /// What was wrong with it.
        reason: String,
    },
    /// A fault [`FaultEngine`] was set to produce: a failed fsync or write, a full disk.
    #[error("{0} (injected)")]
    Injected(&'static str),
    /// An ingestion was stopped before it finished (nothing of it is visible).
    #[error("stopped before it finished")]
    Stopped,
    /// Records to ingest were not in ascending key order within a column family.
    #[error("records to ingest into {0:?} out of order")]
    Unsorted(Cf),
    /// A file kept beside the engine (a staged snapshot) could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// One record to [ingest](Engine::ingest): column family, key, value.
pub type Record = (Cf, Vec<u8>, Vec<u8>);

/// Checks that `key` of `cf` may follow the record `last` was in an ingestion (strictly
/// above it within a run of one column family), and makes it `last`.
fn check_order(last: &mut Option<(Cf, Vec<u8>)>, cf: Cf, key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::EmptyKey(cf));
    }
    match last {
        Some((last_cf, last_key)) if *last_cf == cf => {
            if key <= last_key.as_slice() {
                return Err(StorageError::Unsorted(cf));
            }
            last_key.clear();
            last_key.extend_from_slice(key);
        }
        _ => *last = Some((cf, key.to_vec())),
    }
    Ok(())
}

/// A key-value pair read from the engine.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Iterator over key-value pairs of one column family, in key order or reverse key order.
pub type KvIter<'a> = Box<dyn Iterator<Item = Result<KvPair>> + Send + 'a>;

/// A node's storage: atomic multi-column-family batches, point reads and snapshots.
pub trait Engine: Send + Sync + 'static {
    /// Applies `batch` atomically. Readers see all of it or none of it. Not synced: see
    /// [`Engine::sync`]. A batch writing the empty key is refused whole.
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Makes every write so far durable against power loss (one fsync of the journal).
    fn sync(&self) -> Result<()>;

    /// Reads the latest value of `key`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// A consistent read-only view of the engine as of now.
    fn snapshot(&self) -> Box<dyn Snapshot>;

    /// Bytes the engine occupies on disk (approximate; 0 for memory engines).
    fn disk_size(&self) -> u64;

    /// Bytes in memtables, active and sealed (0 for engines without them). A writer that
    /// can go faster than the flushes (a snapshot's install) waits while this is high.
    fn write_buffer_bytes(&self) -> u64 {
        0
    }

    /// Seals every non-empty memtable for flushing, without waiting for the flushes. A
    /// writer waiting for [`Engine::write_buffer_bytes`] to fall asks for this, since
    /// memtables below their size limit are flushed only when the journal grows long.
    fn flush_memtables(&self) -> Result<()> {
        Ok(())
    }

    /// Writes `records` straight into the engine's files, past memtables and the journal
    /// (fjall's ingestion; TiKV ingests SST files the same way), for a snapshot's
    /// install, whose records would otherwise go through both. The records come in runs
    /// of one column family each, keys strictly ascending within a run
    /// ([`StorageError::Unsorted`] otherwise). Durable when it returns, and newer than
    /// every write before it. fjall makes each run visible once written whole (an error
    /// leaves the unfinished run invisible); the default writes batches, visible as they
    /// go, and syncs at the end.
    fn ingest(&self, records: &mut dyn Iterator<Item = Result<Record>>) -> Result<()> {
        let mut batch = WriteBatch::new();
        let mut bytes = 0;
        let mut last: Option<(Cf, Vec<u8>)> = None;
        for record in records {
            let (cf, key, value) = record?;
            check_order(&mut last, cf, &key)?;
            bytes += key.len() + value.len();
            batch.put(cf, key, value);
            if bytes >= 1 << 20 {
                self.write(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        self.write(batch)?;
        self.sync()
    }

    /// What the engine reports of itself, for metrics (empty for memory engines).
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

/// An engine's own figures, read at once (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// Bytes on disk, per column family.
    pub cf_disk_bytes: Vec<(Cf, u64)>,
    /// Bytes in memtables, active and sealed.
    pub memtable_bytes: u64,
    /// Bytes in the block cache, and its capacity.
    pub cache_bytes: u64,
    /// The block cache's capacity.
    pub cache_capacity_bytes: u64,
    /// Compactions finished since the engine opened.
    pub compactions_completed: u64,
    /// Compactions running now.
    pub active_compactions: u64,
    /// Sealed memtables waiting to be flushed.
    pub pending_flushes: u64,
    /// Journal files (more than a few: flushes are behind).
    pub journals: u64,
    /// Writes that took 50 ms or more: the engine throttling writers while flushes catch
    /// up (a write stall), or a slow disk.
    pub slow_writes: u64,
}

/// A consistent, read-only view of an engine.
pub trait Snapshot: Send + Sync {
    /// Reads `key` as of the snapshot.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Iterates `[start, end)` (an empty `end` is unbounded) in ascending key order, or in
    /// descending order when `reverse` is set.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], reverse: bool) -> KvIter<'_>;
}

/// Shared handle to a node's engine.
pub type EngineRef = Arc<dyn Engine>;

#[cfg(test)]
mod tests;
