//! [`PlacementState`]: the placement group's state machine.
//!
//! Records in [`Cf::Placement`]:
//!
//! ```text
//! b"cluster"        -> ClusterRecord (cluster id, next id, TSO high-water, GC safe point)
//! b"s" | store id   -> Store
//! b"g" | region id  -> Region
//! b"k" | keyspace   -> KeyspaceMeta
//! ```

use crate::command::{Command, Kind, Regions, Response};
use prost::Message as _;
use scandium_storage::{Cf, EngineRef, StorageError, WriteBatch};
use scandium_types::{Region, RegionId, Store, StoreId};
use std::collections::BTreeMap;
use std::ops::Bound;
use thiserror::Error;

const CLUSTER_KEY: &[u8] = b"cluster";
const STORE_TAG: u8 = b's';
const REGION_TAG: u8 = b'g';
const KEYSPACE_TAG: u8 = b'k';

/// Scalars of the cluster, kept in one record.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterRecord {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    next_id: u64,
    #[prost(uint64, tag = "3")]
    tso_limit_ms: u64,
    #[prost(uint64, tag = "4")]
    gc_safe_point: u64,
}

/// A keyspace: a named, isolated part of the API V2 key space.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyspaceMeta {
    /// 24-bit id, part of every key's prefix.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Unique name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// kvproto `KeyspaceState` (0 = enabled).
    #[prost(int32, tag = "3")]
    pub state: i32,
    /// Unix seconds at creation.
    #[prost(int64, tag = "4")]
    pub created_at: i64,
}

/// Errors that stop a placement command from applying. They are deterministic: every
/// replica refuses the same command the same way.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApplyError {
    /// The command bytes are not a placement command.
    #[error("undecodable placement command: {0}")]
    Undecodable(String),
}

/// The cluster's metadata, as of the last applied placement command.
#[derive(Clone, Debug, Default)]
pub struct PlacementState {
    cluster: ClusterRecordView,
    stores: BTreeMap<StoreId, Store>,
    regions: BTreeMap<RegionId, Region>,
    /// Start key to Region id.
    by_start: BTreeMap<Vec<u8>, RegionId>,
    keyspaces: BTreeMap<u32, KeyspaceMeta>,
}

#[derive(Clone, Copy, Debug, Default)]
struct ClusterRecordView {
    cluster_id: u64,
    next_id: u64,
    tso_limit_ms: u64,
    gc_safe_point: u64,
}

impl PlacementState {
    /// The state of a new cluster, and the batch that persists it. `next_id` is the first id
    /// the allocator will hand out (ids below it are used by the bootstrap).
    pub fn bootstrap(
        cluster_id: u64,
        next_id: u64,
        store: Store,
        regions: Vec<Region>,
        keyspaces: Vec<KeyspaceMeta>,
    ) -> (PlacementState, WriteBatch) {
        let mut state = PlacementState {
            cluster: ClusterRecordView { cluster_id, next_id, tso_limit_ms: 0, gc_safe_point: 0 },
            ..Default::default()
        };
        let mut batch = WriteBatch::new();
        state.write_cluster(&mut batch);
        state.put_store(store, &mut batch);
        for region in regions {
            state.insert_region(region, &mut batch);
        }
        for keyspace in keyspaces {
            batch.put(
                Cf::Placement,
                tagged(KEYSPACE_TAG, u64::from(keyspace.id)),
                keyspace.encode_to_vec(),
            );
            state.keyspaces.insert(keyspace.id, keyspace);
        }
        (state, batch)
    }

    /// Loads the state from the engine; `None` if the node was never bootstrapped.
    pub fn load(engine: &EngineRef) -> Result<Option<PlacementState>, StorageError> {
        let snapshot = engine.snapshot();
        let Some(cluster) = snapshot.get(Cf::Placement, CLUSTER_KEY)? else { return Ok(None) };
        let cluster: ClusterRecord = decode(&cluster)?;
        let mut state = PlacementState {
            cluster: ClusterRecordView {
                cluster_id: cluster.cluster_id,
                next_id: cluster.next_id,
                tso_limit_ms: cluster.tso_limit_ms,
                gc_safe_point: cluster.gc_safe_point,
            },
            ..Default::default()
        };
        for item in snapshot.scan(Cf::Placement, b"", b"", false) {
            let (key, value) = item?;
            match key.first() {
                Some(&STORE_TAG) if key.len() == 9 => {
                    let store: Store = decode(&value)?;
                    state.stores.insert(store.id, store);
                }
                Some(&REGION_TAG) if key.len() == 9 => {
                    let region: Region = decode(&value)?;
                    state.by_start.insert(region.start_key.clone(), region.id);
                    state.regions.insert(region.id, region);
                }
                Some(&KEYSPACE_TAG) if key.len() == 9 => {
                    let keyspace: KeyspaceMeta = decode(&value)?;
                    state.keyspaces.insert(keyspace.id, keyspace);
                }
                _ => {}
            }
        }
        Ok(Some(state))
    }

    /// Applies a committed command, adding its persistent effects to `batch`.
    pub fn apply(&mut self, command: &[u8], batch: &mut WriteBatch) -> Response {
        let kind = match Command::decode(command) {
            Ok(Command { kind: Some(kind) }) => kind,
            Ok(Command { kind: None }) => return Response::Invalid("empty command".into()),
            Err(e) => return Response::Invalid(ApplyError::Undecodable(e.to_string()).to_string()),
        };
        match kind {
            Kind::PutStore(store) => {
                self.put_store(store, batch);
                Response::Done
            }
            Kind::PutRegion(region) => self.put_region(region, batch),
            Kind::PutRegions(Regions { regions }) => {
                let outcomes: Vec<Response> =
                    regions.into_iter().map(|region| self.put_region(region, batch)).collect();
                if !outcomes.is_empty() && outcomes.iter().all(|r| *r == Response::StaleRegion) {
                    Response::StaleRegion
                } else {
                    Response::Done
                }
            }
            Kind::AllocIds(count) => {
                let first = self.cluster.next_id;
                self.cluster.next_id = first.saturating_add(count);
                self.write_cluster(batch);
                Response::Ids { first }
            }
            Kind::RaiseTsoLimit(limit) => {
                if limit > self.cluster.tso_limit_ms {
                    self.cluster.tso_limit_ms = limit;
                    self.write_cluster(batch);
                }
                Response::TsoLimit(self.cluster.tso_limit_ms)
            }
            Kind::UpdateGcSafePoint(safe_point) => {
                if safe_point > self.cluster.gc_safe_point {
                    self.cluster.gc_safe_point = safe_point;
                    self.write_cluster(batch);
                }
                Response::GcSafePoint(self.cluster.gc_safe_point)
            }
        }
    }

    /// The cluster's id, chosen at bootstrap; clients check it is equal on every member.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.cluster_id
    }

    /// The persisted timestamp high-water mark (milliseconds).
    pub fn tso_limit_ms(&self) -> u64 {
        self.cluster.tso_limit_ms
    }

    /// The GC safe point.
    pub fn gc_safe_point(&self) -> u64 {
        self.cluster.gc_safe_point
    }

    /// A store by id.
    pub fn store(&self, id: StoreId) -> Option<&Store> {
        self.stores.get(&id)
    }

    /// Every store.
    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    /// A Region by id.
    pub fn region(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(&id)
    }

    /// The Region containing `key`.
    pub fn region_by_key(&self, key: &[u8]) -> Option<&Region> {
        let (_, id) =
            self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        self.regions.get(id).filter(|r| r.contains(key))
    }

    /// The Region ending exactly where the Region containing `key` starts.
    pub fn prev_region(&self, key: &[u8]) -> Option<&Region> {
        let start = self.region_by_key(key)?.start_key.clone();
        if start.is_empty() {
            return None;
        }
        self.region_by_key_before(&start)
    }

    fn region_by_key_before(&self, key: &[u8]) -> Option<&Region> {
        let (_, id) =
            self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(key))).next_back()?;
        self.regions.get(id)
    }

    /// Up to `limit` Regions (0 = no limit) overlapping `[start, end)` (empty `end` =
    /// unbounded), in key order.
    pub fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<&Region> {
        let first_start = self
            .region_by_key(start)
            .map(|r| r.start_key.clone())
            .unwrap_or_else(|| start.to_vec());
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.by_start
            .range(first_start..)
            .filter_map(|(_, id)| self.regions.get(id))
            .take_while(|r| end.is_empty() || r.start_key.as_slice() < end)
            .take(limit)
            .collect()
    }

    /// Every Region, in key order.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.by_start.values().filter_map(|id| self.regions.get(id))
    }

    /// A keyspace by name.
    pub fn keyspace_by_name(&self, name: &str) -> Option<&KeyspaceMeta> {
        self.keyspaces.values().find(|k| k.name == name)
    }

    /// Every keyspace, by id.
    pub fn keyspaces(&self) -> impl Iterator<Item = &KeyspaceMeta> {
        self.keyspaces.values()
    }

    fn put_store(&mut self, store: Store, batch: &mut WriteBatch) {
        batch.put(Cf::Placement, tagged(STORE_TAG, store.id), store.encode_to_vec());
        self.stores.insert(store.id, store);
    }

    fn put_region(&mut self, region: Region, batch: &mut WriteBatch) -> Response {
        if let Some(known) = self.regions.get(&region.id) {
            if region.epoch().is_stale_against(&known.epoch()) {
                return Response::StaleRegion;
            }
        }
        let overlapping: Vec<RegionId> = self
            .regions
            .values()
            .filter(|r| r.id != region.id && overlaps(r, &region))
            .map(|r| r.id)
            .collect();
        if overlapping.iter().any(|id| self.regions[id].version > region.version) {
            return Response::StaleRegion;
        }
        for id in overlapping {
            self.remove_region(id, batch);
        }
        self.remove_region(region.id, batch);
        self.insert_region(region, batch);
        Response::Done
    }

    fn insert_region(&mut self, region: Region, batch: &mut WriteBatch) {
        batch.put(Cf::Placement, tagged(REGION_TAG, region.id), region.encode_to_vec());
        self.by_start.insert(region.start_key.clone(), region.id);
        self.regions.insert(region.id, region);
    }

    fn remove_region(&mut self, id: RegionId, batch: &mut WriteBatch) {
        if let Some(old) = self.regions.remove(&id) {
            if self.by_start.get(&old.start_key) == Some(&id) {
                self.by_start.remove(&old.start_key);
            }
            batch.delete(Cf::Placement, tagged(REGION_TAG, id));
        }
    }

    fn write_cluster(&self, batch: &mut WriteBatch) {
        let record = ClusterRecord {
            cluster_id: self.cluster.cluster_id,
            next_id: self.cluster.next_id,
            tso_limit_ms: self.cluster.tso_limit_ms,
            gc_safe_point: self.cluster.gc_safe_point,
        };
        batch.put(Cf::Placement, CLUSTER_KEY.to_vec(), record.encode_to_vec());
    }
}

fn overlaps(a: &Region, b: &Region) -> bool {
    let a_before_b_ends = b.end_key.is_empty() || a.start_key < b.end_key;
    let b_before_a_ends = a.end_key.is_empty() || b.start_key < a.end_key;
    a_before_b_ends && b_before_a_ends
}

fn tagged(tag: u8, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(tag);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StorageError> {
    M::decode(bytes)
        .map_err(|e| StorageError::Corrupted { cf: Cf::Placement, reason: e.to_string() })
}

#[cfg(test)]
mod tests;
