//! An in-memory engine for tests of the layers above storage.

use crate::{Cf, Engine, KvIter, Mutation, Result, Snapshot, WriteBatch};
use imbl::OrdMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

/// Persistent maps: a snapshot shares the data with the engine and costs O(1), however
/// large the data (the simulator takes one per transactional command).
type Tables = [OrdMap<Vec<u8>, Vec<u8>>; Cf::ALL.len()];

/// [`Engine`] keeping everything in memory, in persistent ordered maps, for tests of the
/// layers above storage and for the simulator. `sync` is a no-op: nothing survives the
/// process anyway.
#[derive(Clone, Default)]
pub struct MemoryEngine {
    tables: Arc<RwLock<Tables>>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// An independent engine holding a copy of this one's data (a clone shares it).
    pub(crate) fn deep_copy(&self) -> MemoryEngine {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        MemoryEngine { tables: Arc::new(RwLock::new(tables.clone())) }
    }
}

impl Engine for MemoryEngine {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        if let Some(cf) = batch.empty_key_cf() {
            return Err(crate::StorageError::EmptyKey(cf));
        }
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        for mutation in batch.into_mutations() {
            match mutation {
                Mutation::Put { cf, key, value } => {
                    tables[cf.index()].insert(key, value);
                }
                Mutation::Delete { cf, key } => {
                    tables[cf.index()].remove(&key);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        Ok(tables[cf.index()].get(key).cloned())
    }

    fn snapshot(&self) -> Box<dyn Snapshot> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        Box::new(MemorySnapshot { tables: tables.clone() })
    }

    fn disk_size(&self) -> u64 {
        0
    }
}

struct MemorySnapshot {
    tables: Tables,
}

impl Snapshot for MemorySnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tables[cf.index()].get(key).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], reverse: bool) -> KvIter<'_> {
        if !end.is_empty() && start >= end {
            return Box::new(std::iter::empty());
        }
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
        let range = self.tables[cf.index()]
            .range::<_, [u8]>((Bound::Included(start), upper))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        }
    }
}
