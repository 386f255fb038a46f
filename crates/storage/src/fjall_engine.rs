//! The on-disk engine: one fjall database, one fjall keyspace per column family.

use crate::{Cf, Engine, EngineStats, KvIter, Mutation, Result, Snapshot, WriteBatch};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Memory settings of the fjall engine. Every figure is a ceiling, not an allocation:
/// an empty node uses almost none of it.
#[derive(Clone, Debug)]
pub struct FjallOptions {
    /// Block cache shared by all column families, in bytes.
    pub cache_size_bytes: u64,
    /// Largest memtable of one column family before it is flushed, in bytes.
    pub memtable_size_bytes: u64,
    /// Journal kept before memtables are flushed to let its oldest part go, in bytes. A
    /// start after a crash replays all of it: fjall's default, 512 MiB, is a restart of
    /// ten seconds and more, since column families written rarely keep old journal files
    /// alive until this bound forces their flush. fjall takes no bound below 64 MiB
    /// (replayed in up to 2.7 s under a transaction load); below that, the engine keeps
    /// the bound itself: a sync that finds more written since every memtable was last
    /// flushed flushes them all.
    pub max_journal_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        FjallOptions {
            cache_size_bytes: 64 << 20,
            memtable_size_bytes: 16 << 20,
            max_journal_bytes: 24 << 20,
        }
    }
}

/// [`Engine`] on fjall. Cheap to share: clones point at the same database.
#[derive(Clone)]
pub struct FjallEngine {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    keyspaces: Vec<Keyspace>,
    /// The journal bound the engine keeps itself (0: fjall's own, at 64 MiB or more).
    journal_limit: u64,
    /// Bytes written since every memtable was last flushed: about what a start would
    /// replay of the journal (fjall's own size for it counts the space its files take
    /// ahead, 64 MiB from the first write).
    unflushed: AtomicU64,
    /// Writes that took [`SLOW_WRITE`] or more.
    slow_writes: AtomicU64,
}

/// A write this slow counts as stalled (see [`EngineStats::slow_writes`]).
const SLOW_WRITE: Duration = Duration::from_millis(50);

/// fjall's lowest journal bound.
const FJALL_JOURNAL_FLOOR: u64 = 64 << 20;

/// How long an ingestion waits, at most, for the background worker to flush the
/// keyspace's memtables before it finishes (see [`Engine::ingest`] there).
const INGEST_FLUSH_WAIT: Duration = Duration::from_secs(1);

impl FjallEngine {
    /// Opens (or creates) the engine in `dir`.
    pub fn open(dir: &Path, options: &FjallOptions) -> Result<FjallEngine> {
        // One background worker. With more, fjall keeps worker 0 for flushes by putting
        // every compaction it receives back on the queue, which it then receives again: a
        // busy loop for as long as another worker compacts (measured at ~11% of the
        // server's CPU on two cores). One worker flushes and compacts in turn.
        let db = Database::builder(dir)
            .cache_size(options.cache_size_bytes)
            .max_journaling_size(options.max_journal_bytes.max(FJALL_JOURNAL_FLOOR))
            .worker_threads(1)
            .open()?;
        let keyspaces = Cf::ALL
            .iter()
            .map(|cf| {
                let memtable = options.memtable_size_bytes;
                db.keyspace(cf.name(), || {
                    KeyspaceCreateOptions::default().max_memtable_size(memtable)
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let journal_limit = match options.max_journal_bytes {
            limit if limit < FJALL_JOURNAL_FLOOR => limit,
            _ => 0,
        };
        let inner = Inner {
            db,
            keyspaces,
            journal_limit,
            unflushed: AtomicU64::new(0),
            slow_writes: AtomicU64::new(0),
        };
        Ok(FjallEngine { inner: Arc::new(inner) })
    }

    /// Flushes every memtable if the journal is past the bound the engine keeps
    /// ([`FjallOptions::max_journal_bytes`]), and not while an earlier flush is still
    /// under way (its journal goes once it is done). Two counters read: cheap enough for
    /// every sync.
    fn keep_journal_short(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.journal_limit == 0 {
            return Ok(());
        }
        if inner.unflushed.load(Ordering::Relaxed) <= inner.journal_limit
            || inner.db.outstanding_flushes() > 0
        {
            return Ok(());
        }
        self.flush_memtables()
    }
}

impl Inner {
    fn keyspace(&self, cf: Cf) -> &Keyspace {
        &self.keyspaces[cf.index()]
    }
}

impl Engine for FjallEngine {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        if let Some(cf) = batch.empty_key_cf() {
            return Err(crate::StorageError::EmptyKey(cf));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mut fjall_batch = inner.db.batch();
        let mut bytes = 0;
        for mutation in batch.into_mutations() {
            match mutation {
                Mutation::Put { cf, key, value } => {
                    bytes += key.len() + value.len();
                    fjall_batch.insert(inner.keyspace(cf), key, value)
                }
                Mutation::Delete { cf, key } => {
                    bytes += key.len();
                    fjall_batch.remove(inner.keyspace(cf), key)
                }
            }
        }
        inner.unflushed.fetch_add(bytes as u64, Ordering::Relaxed);
        let started = Instant::now();
        fjall_batch.commit()?;
        if started.elapsed() >= SLOW_WRITE {
            inner.slow_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.inner.db.persist(PersistMode::SyncData)?;
        self.keep_journal_short()
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.keyspace(cf).get(key)?.map(|v| v.to_vec()))
    }

    fn snapshot(&self) -> Box<dyn Snapshot> {
        Box::new(FjallSnapshot { snapshot: self.inner.db.snapshot(), inner: self.inner.clone() })
    }

    fn disk_size(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }

    fn write_buffer_bytes(&self) -> u64 {
        self.inner.db.write_buffer_size()
    }

    fn flush_memtables(&self) -> Result<()> {
        // `rotate_memtable` is public but hidden from fjall's documentation (its tests use
        // it); the lock file pins the version it was checked against.
        self.inner.unflushed.store(0, Ordering::Relaxed);
        for keyspace in &self.inner.keyspaces {
            keyspace.rotate_memtable()?;
        }
        Ok(())
    }

    fn ingest(&self, records: &mut dyn Iterator<Item = Result<crate::Record>>) -> Result<()> {
        let mut records = records.peekable();
        let mut last = None;
        // One ingestion per run of a column family.
        while let Some(record) = records.next() {
            let (cf, key, value) = record?;
            crate::check_order(&mut last, cf, &key)?;
            let keyspace = self.inner.keyspace(cf);
            let mut ingestion = keyspace.start_ingestion()?;
            ingestion.write(key, value)?;
            // The rest of the run (and an error, to return it).
            let same_run = |r: &Result<crate::Record>| r.as_ref().map_or(true, |(c, ..)| *c == cf);
            while let Some(next) = records.next_if(same_run) {
                let (_, key, value) = next?;
                crate::check_order(&mut last, cf, &key)?;
                ingestion.write(key, value)?;
            }
            // fjall's `finish` holds the journal's lock (every write of the node waits)
            // while it flushes the keyspace's memtables: have the background worker flush
            // them first, without the lock, so that little is left for then. Not for
            // long, though: the worker may be in a long compaction, and the replica
            // installing answers nothing meanwhile. `sealed_memtable_count` is hidden
            // from fjall's documentation like `rotate_memtable` (see `flush_memtables`).
            if keyspace.rotate_memtable()? {
                let deadline = Instant::now() + INGEST_FLUSH_WAIT;
                while keyspace.sealed_memtable_count() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // Every write of the node waits while `finish` holds the journal's lock: a
            // long one would stall every Region's Raft rounds here (58-277 ms at most in
            // the 2 GiB scale-out runs, under an election timeout; docs/scale-out.md).
            let finishing = Instant::now();
            ingestion.finish()?;
            let held = finishing.elapsed();
            if held >= SLOW_WRITE {
                let ms = held.as_millis() as u64;
                tracing::warn!(cf = cf.name(), ms, "an ingestion held the journal's lock");
            }
        }
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        let db = &self.inner.db;
        EngineStats {
            cf_disk_bytes: Cf::ALL
                .iter()
                .map(|&cf| (cf, self.inner.keyspace(cf).disk_space()))
                .collect(),
            memtable_bytes: db.write_buffer_size(),
            cache_bytes: db.cache_size(),
            cache_capacity_bytes: db.cache_capacity(),
            compactions_completed: db.compactions_completed() as u64,
            active_compactions: db.active_compactions() as u64,
            pending_flushes: db.outstanding_flushes() as u64,
            journals: db.journal_count() as u64,
            slow_writes: self.inner.slow_writes.load(Ordering::Relaxed),
        }
    }
}

struct FjallSnapshot {
    snapshot: fjall::Snapshot,
    inner: Arc<Inner>,
}

impl Snapshot for FjallSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snapshot.get(self.inner.keyspace(cf), key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], reverse: bool) -> KvIter<'_> {
        let lower = Bound::Included(start);
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
        if !end.is_empty() && start >= end {
            return Box::new(std::iter::empty());
        }
        let iter = self.snapshot.range::<&[u8], _>(self.inner.keyspace(cf), (lower, upper));
        let map = |guard: fjall::Guard| {
            let (key, value) = guard.into_inner()?;
            Ok((key.to_vec(), value.to_vec()))
        };
        if reverse {
            Box::new(iter.rev().map(map))
        } else {
            Box::new(iter.map(map))
        }
    }
}
