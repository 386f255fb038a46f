//! [`PlacementState`]: the placement group's state machine.
//!
//! Records in [`Cf::Placement`]:
//!
//! ```text
//! b"cluster"        -> ClusterRecord (cluster id, next id, TSO high-water, GC safe point)
//! b"s" | store id   -> Store
//! b"g" | region id  -> Region
//! b"k" | keyspace   -> KeyspaceMeta
//! b"l" | region id  -> RegionLeader (who leads the Region, at which term)
//! b"a" | name       -> Grant (what one client identity may do)
//! ```

use crate::command::{
    Access, Command, Grant, Kind, RegionReport, Regions, Reports, Response, SchedulerSettings,
    StoreSeen, StoresSeen,
};
use prost::Message as _;
use scandium_storage::{Cf, EngineRef, StorageError, WriteBatch};
use scandium_types::{Region, RegionId, Store, StoreId, StoreState};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use thiserror::Error;

const CLUSTER_KEY: &[u8] = b"cluster";
const STORE_TAG: u8 = b's';
const REGION_TAG: u8 = b'g';
const KEYSPACE_TAG: u8 = b'k';
const LEADER_TAG: u8 = b'l';
const GRANT_TAG: u8 = b'a';
/// Voters of every data Region when the cluster does not say.
pub const DEFAULT_REPLICAS: u64 = 3;

/// Who leads a Region, as its leader last reported.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RegionLeader {
    /// The leader's peer id.
    #[prost(uint64, tag = "1")]
    pub peer_id: u64,
    /// Its term.
    #[prost(uint64, tag = "2")]
    pub term: u64,
}

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
    /// Voters per data Region (0 = [`DEFAULT_REPLICAS`]).
    #[prost(uint64, tag = "5")]
    replicas: u64,
    /// The scheduler's settings (absent: the defaults).
    #[prost(message, optional, tag = "6")]
    scheduler: Option<SchedulerSettings>,
    /// Requests are checked against the grants.
    #[prost(bool, tag = "7")]
    authorization: bool,
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
    /// How many Regions have a replica on each store: what the scheduler weighs stores
    /// by, kept as Regions come and go rather than counted over every Region per decision
    /// (O(n) each, O(n²) for a store's worth of repairs).
    replicas_by_store: BTreeMap<StoreId, usize>,
    keyspaces: BTreeMap<u32, KeyspaceMeta>,
    leaders: BTreeMap<RegionId, RegionLeader>,
    grants: BTreeMap<String, Grant>,
    /// Counts changes of the grants and of the authorisation switch since this state was
    /// loaded, so the node republishes its lookup only when they change.
    authorization_changes: u64,
}

#[derive(Clone, Debug, Default)]
struct ClusterRecordView {
    cluster_id: u64,
    next_id: u64,
    tso_limit_ms: u64,
    gc_safe_point: u64,
    replicas: u64,
    scheduler: SchedulerSettings,
    authorization: bool,
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
            cluster: ClusterRecordView {
                cluster_id,
                next_id,
                tso_limit_ms: 0,
                gc_safe_point: 0,
                replicas: 0,
                scheduler: SchedulerSettings::default(),
                authorization: false,
            },
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

    /// Sets how many voters data Regions want, at bootstrap (later: `Kind::SetReplicas`).
    pub fn set_replicas(&mut self, replicas: u64, batch: &mut WriteBatch) {
        self.cluster.replicas = replicas;
        self.write_cluster(batch);
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
                replicas: cluster.replicas,
                scheduler: cluster.scheduler.unwrap_or_default(),
                authorization: cluster.authorization,
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
                    state.count_replicas(&region, true);
                    state.regions.insert(region.id, region);
                }
                Some(&KEYSPACE_TAG) if key.len() == 9 => {
                    let keyspace: KeyspaceMeta = decode(&value)?;
                    state.keyspaces.insert(keyspace.id, keyspace);
                }
                Some(&LEADER_TAG) if key.len() == 9 => {
                    let id = u64::from_be_bytes(key[1..9].try_into().expect("nine bytes"));
                    state.leaders.insert(id, decode(&value)?);
                }
                Some(&GRANT_TAG) => {
                    let grant: Grant = decode(&value)?;
                    state.grants.insert(grant.name.clone(), grant);
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
            Kind::PutStore(mut store) => {
                match self.stores.get(&store.id).map(|s| s.state()) {
                    Some(StoreState::Tombstone) => {
                        return Response::Invalid(format!(
                            "store {} was removed from the cluster",
                            store.id
                        ))
                    }
                    // A draining store keeps draining across restarts.
                    Some(StoreState::Offline) => store.state = StoreState::Offline as i32,
                    _ => {}
                }
                let seen = self.stores.get(&store.id).map_or(0, |s| s.last_heartbeat_ms);
                store.last_heartbeat_ms = store.last_heartbeat_ms.max(seen);
                self.put_store(store, batch);
                Response::Done
            }
            Kind::StoresSeen(StoresSeen { seen }) => {
                for StoreSeen { store_id, wall_ms } in seen {
                    let Some(mut store) = self.stores.get(&store_id).cloned() else { continue };
                    if wall_ms > store.last_heartbeat_ms {
                        store.last_heartbeat_ms = wall_ms;
                        self.put_store(store, batch);
                    }
                }
                Response::Done
            }
            Kind::JoinStore(mut store) => {
                store.id = self.cluster.next_id;
                store.state = StoreState::Up as i32;
                self.cluster.next_id += 1;
                self.write_cluster(batch);
                let first = store.id;
                self.put_store(store, batch);
                Response::Ids { first }
            }
            Kind::SetStoreState(change) => {
                let Some(mut store) = self.stores.get(&change.store_id).cloned() else {
                    return Response::Invalid(format!("store {} not found", change.store_id));
                };
                if store.state() == StoreState::Tombstone && change.state != store.state {
                    return Response::Invalid(format!("store {} is a tombstone", store.id));
                }
                store.state = change.state;
                self.put_store(store, batch);
                Response::Done
            }
            Kind::SetScheduler(settings) => {
                if settings.balance_limit > 1024 {
                    let limit = settings.balance_limit;
                    return Response::Invalid(format!(
                        "balance_limit must be at most 1024, not {limit}"
                    ));
                }
                if settings.store_limit > 100_000 {
                    let limit = settings.store_limit;
                    return Response::Invalid(format!(
                        "store_limit must be at most 100000 moves a minute, not {limit}"
                    ));
                }
                if let Err(invalid) = self.check_scheduler(&settings) {
                    return Response::Invalid(invalid);
                }
                self.cluster.scheduler = settings;
                self.write_cluster(batch);
                Response::Done
            }
            Kind::SetGrant(grant) => {
                if let Err(invalid) = self.check_grant(&grant) {
                    return Response::Invalid(invalid);
                }
                let key = grant_key(&grant.name);
                if grant.is_empty() {
                    self.grants.remove(&grant.name);
                    batch.delete(Cf::Placement, key);
                } else {
                    batch.put(Cf::Placement, key, grant.encode_to_vec());
                    self.grants.insert(grant.name.clone(), grant);
                }
                self.authorization_changes += 1;
                Response::Done
            }
            Kind::SetAuthorization(on) => {
                self.cluster.authorization = on;
                self.write_cluster(batch);
                self.authorization_changes += 1;
                Response::Done
            }
            Kind::SetReplicas(replicas) => {
                if !(1..=7).contains(&replicas) {
                    return Response::Invalid(format!(
                        "replicas must be between 1 and 7, not {replicas}"
                    ));
                }
                self.cluster.replicas = replicas;
                self.write_cluster(batch);
                Response::Done
            }
            Kind::ReportRegions(Reports { reports }) => {
                for report in reports {
                    self.report_region(report, batch);
                }
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

    /// The scheduler's settings for the whole cluster.
    pub fn scheduler_settings(&self) -> &SchedulerSettings {
        &self.cluster.scheduler
    }

    /// Whether requests are checked against the grants.
    pub fn authorization(&self) -> bool {
        self.cluster.authorization
    }

    /// Every grant, by identity.
    pub fn grants(&self) -> &BTreeMap<String, Grant> {
        &self.grants
    }

    /// How many times the grants or the authorisation switch changed since this state
    /// was loaded (a count, not a version: it restarts at every load).
    pub fn authorization_changes(&self) -> u64 {
        self.authorization_changes
    }

    /// The GC safe point.
    pub fn gc_safe_point(&self) -> u64 {
        self.cluster.gc_safe_point
    }

    /// Voters every data Region should have.
    pub fn replicas(&self) -> u64 {
        match self.cluster.replicas {
            0 => DEFAULT_REPLICAS,
            n => n,
        }
    }

    /// The leader of Region `id`, as last reported (its peer, if still a member).
    pub fn leader_of(&self, id: RegionId) -> Option<&scandium_types::Peer> {
        let leader = self.leaders.get(&id)?;
        self.regions.get(&id)?.peer(leader.peer_id)
    }

    /// The last reported leader record of Region `id`.
    pub fn leader_record(&self, id: RegionId) -> Option<RegionLeader> {
        self.leaders.get(&id).copied()
    }

    /// A state with nothing but the cluster id: what a node that joined but has not
    /// received the placement group's snapshot yet knows.
    pub fn empty(cluster_id: u64) -> PlacementState {
        PlacementState {
            cluster: ClusterRecordView { cluster_id, ..Default::default() },
            ..Default::default()
        }
    }

    /// Whether this is [`PlacementState::empty`] (no store is known).
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
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

    /// How many Regions have a replica on `store` (O(log stores)).
    pub fn replica_count(&self, store: StoreId) -> usize {
        self.replicas_by_store.get(&store).copied().unwrap_or(0)
    }

    /// How many Regions there are.
    pub fn region_count(&self) -> usize {
        self.regions.len()
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
        let overlapping = self.overlapping(&region);
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

    /// The Regions other than `region.id` that overlap `region`: the one starting at or
    /// before its start, if it reaches past it, and those starting inside it. Recorded
    /// Regions never overlap one another (a report that would is refused, or replaces
    /// them), so the start-key index finds every one in O(log n) plus one step each; a
    /// scan of every Region per report cost the placement leader O(n) per heartbeat.
    fn overlapping(&self, region: &Region) -> Vec<RegionId> {
        let start = region.start_key.as_slice();
        let before = (self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(start))))
            .next_back()
            .map(|(_, id)| *id);
        let end = region.end_key.as_slice();
        let inside = (self.by_start.range::<[u8], _>((Bound::Excluded(start), Bound::Unbounded)))
            .take_while(|(key, _)| end.is_empty() || key.as_slice() < end)
            .map(|(_, id)| *id);
        let overlap = |id: &RegionId| {
            *id != region.id && self.regions.get(id).is_some_and(|r| overlaps(r, region))
        };
        before.into_iter().chain(inside).filter(overlap).collect()
    }

    fn report_region(&mut self, report: RegionReport, batch: &mut WriteBatch) {
        let Some(region) = report.region else { return };
        let id = region.id;
        let known = self.regions.get(&id).map(|r| r.epoch());
        if known.is_none_or(|epoch| epoch != region.epoch()) {
            self.put_region(region, batch);
        }
        if !self.regions.contains_key(&id) {
            return;
        }
        let newer = self.leaders.get(&id).is_none_or(|l| {
            report.term > l.term || (report.term == l.term && report.leader_peer_id != l.peer_id)
        });
        if newer && report.leader_peer_id != 0 {
            let leader = RegionLeader { peer_id: report.leader_peer_id, term: report.term };
            batch.put(Cf::Placement, tagged(LEADER_TAG, id), leader.encode_to_vec());
            self.leaders.insert(id, leader);
        }
    }

    /// Counts `region`'s replicas in (`add`) or out of [`PlacementState::replica_count`].
    fn count_replicas(&mut self, region: &Region, add: bool) {
        let stores: BTreeSet<StoreId> = region.peers.iter().map(|p| p.store_id).collect();
        for store in stores {
            let count = self.replicas_by_store.entry(store).or_default();
            match add {
                true => *count += 1,
                false => *count = count.saturating_sub(1),
            }
            if *count == 0 {
                self.replicas_by_store.remove(&store);
            }
        }
    }

    fn insert_region(&mut self, region: Region, batch: &mut WriteBatch) {
        batch.put(Cf::Placement, tagged(REGION_TAG, region.id), region.encode_to_vec());
        self.by_start.insert(region.start_key.clone(), region.id);
        self.count_replicas(&region, true);
        self.regions.insert(region.id, region);
    }

    fn remove_region(&mut self, id: RegionId, batch: &mut WriteBatch) {
        if let Some(old) = self.regions.remove(&id) {
            self.count_replicas(&old, false);
            if self.by_start.get(&old.start_key) == Some(&id) {
                self.by_start.remove(&old.start_key);
            }
            batch.delete(Cf::Placement, tagged(REGION_TAG, id));
        }
        if self.leaders.remove(&id).is_some() {
            batch.delete(Cf::Placement, tagged(LEADER_TAG, id));
        }
    }

    /// What `SetScheduler` checks beyond the limits' ranges: isolation levels that are
    /// label names, each once; limits of stores that exist, each once.
    fn check_scheduler(&self, settings: &SchedulerSettings) -> Result<(), String> {
        if let Some(labels) = &settings.location_labels {
            let levels = &labels.levels;
            if levels.len() > 8 {
                return Err(format!("location_labels: at most 8 levels, not {}", levels.len()));
            }
            let name = |l: &String| {
                !l.is_empty()
                    && l.len() <= 64
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            if let Some(bad) = levels.iter().find(|l| !name(l)) {
                return Err(format!("location_labels: {bad:?} is not a label name"));
            }
            let distinct: BTreeSet<&String> = levels.iter().collect();
            if distinct.len() != levels.len() {
                return Err("location_labels: a level is named twice".to_string());
            }
        }
        let limits = &settings.store_limits;
        if limits.len() > SchedulerSettings::MAX_STORE_LIMITS {
            let most = SchedulerSettings::MAX_STORE_LIMITS;
            return Err(format!("at most {most} stores may have a limit of their own"));
        }
        let mut seen = BTreeSet::new();
        for limit in limits {
            let store = limit.store_id;
            if !seen.insert(store) {
                return Err(format!("store {store} has two limits"));
            }
            if !self.stores.contains_key(&store) {
                return Err(format!("store {store} not found"));
            }
            if limit.moves_per_minute > 100_000 {
                let moves = limit.moves_per_minute;
                return Err(format!(
                    "store {store}'s limit must be at most 100000 moves a minute, not {moves}"
                ));
            }
        }
        Ok(())
    }

    /// What `SetGrant` checks: a name that can be compared, within the limits, naming
    /// keyspaces that exist, each once, with access levels this version knows.
    fn check_grant(&self, grant: &Grant) -> Result<(), String> {
        let name = &grant.name;
        let printable = !name.is_empty()
            && name.chars().count() <= Grant::MAX_NAME_LEN
            && !name.chars().any(char::is_control);
        if !printable {
            let most = Grant::MAX_NAME_LEN;
            return Err(format!(
                "grant: {name:?} is not a name (1 to {most} printable characters)"
            ));
        }
        let known = |access: i32| Access::try_from(access).is_ok();
        if !known(grant.raw_v1) || !known(grant.txn_v1) {
            return Err(format!("grant for {name:?}: unknown access level"));
        }
        if grant.keyspaces.len() > Grant::MAX_KEYSPACES {
            let most = Grant::MAX_KEYSPACES;
            return Err(format!(
                "grant for {name:?}: at most {most} keyspaces, not {}",
                grant.keyspaces.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for keyspace in &grant.keyspaces {
            let id = keyspace.keyspace_id;
            if !known(keyspace.access) {
                return Err(format!("grant for {name:?}: unknown access level for keyspace {id}"));
            }
            if !seen.insert(id) {
                return Err(format!("grant for {name:?}: keyspace {id} is named twice"));
            }
            if !self.keyspaces.contains_key(&id) {
                return Err(format!("grant for {name:?}: keyspace {id} does not exist"));
            }
        }
        if !grant.is_empty()
            && !self.grants.contains_key(name)
            && self.grants.len() >= Grant::MAX_GRANTS
        {
            let most = Grant::MAX_GRANTS;
            return Err(format!("at most {most} identities may have grants"));
        }
        Ok(())
    }

    fn write_cluster(&self, batch: &mut WriteBatch) {
        let record = ClusterRecord {
            cluster_id: self.cluster.cluster_id,
            next_id: self.cluster.next_id,
            tso_limit_ms: self.cluster.tso_limit_ms,
            gc_safe_point: self.cluster.gc_safe_point,
            replicas: self.cluster.replicas,
            scheduler: (self.cluster.scheduler != SchedulerSettings::default())
                .then(|| self.cluster.scheduler.clone()),
            authorization: self.cluster.authorization,
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

fn grant_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(GRANT_TAG);
    key.extend_from_slice(name.as_bytes());
    key
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StorageError> {
    M::decode(bytes)
        .map_err(|e| StorageError::Corrupted { cf: Cf::Placement, reason: e.to_string() })
}

#[cfg(test)]
mod tests;
