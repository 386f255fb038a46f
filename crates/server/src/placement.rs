//! The node's side of the placement group: reading the placement state, proposing
//! placement commands, and the timestamp oracle, on every node.
//!
//! Every node holds a replica of the placement group (a voter on up to three or five
//! nodes, a learner on the others), so reads are answered from the local state, on any
//! node, during a failover too (a lookup that failed would let `tikv-client` 0.4 report a
//! commit it never sent). Commands and timestamps come from the placement leader: on
//! another node, they are forwarded to it (`scandium.Cluster`), waiting a little for an
//! election when no leader is known.
//!
//! The leader hands out timestamps only while it holds its lease over the group (a new
//! leader cannot be elected before the lease runs out), and starts every term's
//! allocator at the persisted high-water mark, which is above anything any earlier leader
//! handed out.

use crate::clock::{monotonic_ms, now_ms};
use crate::error::RequestError;
use crate::network::{Clients, Directory};
use crate::raft_driver::RaftHandle;
use prost::Message as _;
use scandium_placement::{
    Allocation, Command, Kind, LeaderTso, PlacementState, RegionReport, Regions, Reports, Response,
    ResponseRecord, TsoError,
};
use scandium_protocol::scandium::{InfoRequest, ProposeMetaRequest, TimestampRequest};
use scandium_raftstore::{ApplyOutput, MetaStateMachine, Registry, META_GROUP_ID};
use scandium_storage::{EngineRef, WriteBatch};
use scandium_types::{Region, StoreId, TimeStamp};
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// How long a request waits for a placement leader to be known (an election).
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a node's placement replica hears no leader before it counts as cut off.
const CUT_OFF_MS: u64 = 3_000;
/// How long one forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// What a node that does not lead the placement group answers a forwarded call.
pub(crate) const NOT_PLACEMENT_LEADER: &str = "not the placement leader";
/// How long [`Placement::answers`] waits for the placement leader's node.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The placement state machine as the Raft thread applies it; readers share the state.
pub struct MetaApplier {
    state: Arc<RwLock<PlacementState>>,
    authz: Arc<crate::authz::Authz>,
}

impl MetaApplier {
    /// Applies to `state`, and publishes its grants to `authz` whenever they change.
    pub fn new(state: Arc<RwLock<PlacementState>>, authz: Arc<crate::authz::Authz>) -> MetaApplier {
        MetaApplier { state, authz }
    }
}

impl MetaStateMachine for MetaApplier {
    fn apply(
        &mut self,
        _index: u64,
        command: &[u8],
        batch: &mut WriteBatch,
    ) -> Box<dyn Any + Send> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let response = state.apply(command, batch);
        self.authz.publish(&state);
        Box::new(response)
    }

    fn restore(&mut self, engine: &EngineRef) {
        match PlacementState::load(engine) {
            Ok(Some(loaded)) => {
                self.authz.republish(&loaded);
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = loaded;
            }
            Ok(None) => tracing::error!("a placement snapshot left no placement state"),
            Err(error) => tracing::error!(%error, "cannot load the placement state of a snapshot"),
        }
    }
}

/// Placement as the rest of the server uses it.
pub struct Placement {
    state: Arc<RwLock<PlacementState>>,
    raft: RaftHandle,
    registry: Registry,
    store_id: StoreId,
    address: String,
    directory: Arc<Directory>,
    clients: Arc<Clients>,
    /// Nodes to ask where the leader is when this node knows none (its `--join` list).
    seeds: Vec<String>,
    tso: Mutex<LeaderTso>,
    raising_limit: AtomicBool,
    tasks: crate::tasks::Tasks,
    /// Since when this node's placement replica has heard no leader (see `cut_off`).
    leaderless_since: Mutex<Option<u64>>,
    /// See `Config::wall_clock_offset_ms`.
    clock_offset_ms: i64,
}

/// Where this node reaches the rest of the cluster from.
pub struct PlacementNetwork {
    /// This store.
    pub store_id: StoreId,
    /// This node's address.
    pub address: String,
    /// Store addresses.
    pub directory: Arc<Directory>,
    /// Channels to other nodes.
    pub clients: Arc<Clients>,
    /// Addresses to ask for the leader as a last resort.
    pub seeds: Vec<String>,
    /// The node's tasks.
    pub tasks: crate::tasks::Tasks,
    /// Added to the wall clock where timestamps are stamped (tests of clock skew).
    pub clock_offset_ms: i64,
}

impl Placement {
    /// Wraps the shared state.
    pub fn new(
        state: Arc<RwLock<PlacementState>>,
        raft: RaftHandle,
        registry: Registry,
        network: PlacementNetwork,
    ) -> Placement {
        Placement {
            state,
            raft,
            registry,
            store_id: network.store_id,
            address: network.address,
            directory: network.directory,
            clients: network.clients,
            seeds: network.seeds,
            tso: Mutex::new(LeaderTso::default()),
            raising_limit: AtomicBool::new(false),
            tasks: network.tasks,
            leaderless_since: Mutex::new(None),
            clock_offset_ms: network.clock_offset_ms,
        }
    }

    /// The placement state as of the last command applied here.
    pub fn read(&self) -> RwLockReadGuard<'_, PlacementState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared state (for the directory of store addresses).
    pub fn shared_state(&self) -> Arc<RwLock<PlacementState>> {
        self.state.clone()
    }

    /// Whether this node leads the placement group and has applied everything committed
    /// before its term, so it may answer placement writes and hand out timestamps.
    pub fn is_serving(&self) -> bool {
        self.registry.meta().ready_for_reads
    }

    /// Whether this node holds a replica of the placement group with its state.
    pub fn has_state(&self) -> bool {
        !self.read().is_empty()
    }

    /// The placement leader's store, as this node's replica knows it.
    pub fn leader_store(&self) -> Option<StoreId> {
        let meta = self.registry.meta();
        if meta.is_leader {
            return Some(self.store_id);
        }
        meta.status.and_then(|s| s.leader).map(|p| p.store_id)
    }

    /// Whether this node's replica of the placement group has heard from no leader for
    /// longer than an election would take: it is cut off from the group's majority. (The
    /// heartbeat loop calls this every beat, which keeps the clock of it running.)
    pub fn cut_off(&self) -> bool {
        let leaderless = self
            .registry
            .meta()
            .status
            .is_some_and(|s| !s.leader_alive && s.region.voters().count() > 1);
        let mut since = self.leaderless_since.lock().unwrap_or_else(|e| e.into_inner());
        if !leaderless {
            *since = None;
            return false;
        }
        let now = monotonic_ms();
        now.saturating_sub(*since.get_or_insert(now)) > CUT_OFF_MS
    }

    /// The placement leader's store, if this node's replica has heard from it lately
    /// (what `GetMembers` names: a client given a dead leader gives up within a second).
    pub fn live_leader_store(&self) -> Option<StoreId> {
        let meta = self.registry.meta();
        if meta.is_leader {
            return Some(self.store_id);
        }
        meta.status.filter(|s| s.leader_alive).and_then(|s| s.leader).map(|p| p.store_id)
    }

    /// Whether `store`'s node answers a call now (within [`PROBE_TIMEOUT`]). A follower
    /// counts its leader alive until an election timeout passes without word from it,
    /// but a killed node's connections are refused at once: `GetMembers` asks this
    /// before it names the leader, because tikv-client, given a leader it cannot
    /// connect to, sleeps a second before it asks again.
    pub async fn answers(&self, store: StoreId) -> bool {
        let Some(address) = self.directory.address(store) else { return false };
        let Ok(mut client) = self.clients.cluster(&address) else { return false };
        let call = tokio::time::timeout(PROBE_TIMEOUT, client.info(InfoRequest {}));
        matches!(call.await, Ok(Ok(_)))
    }

    /// Where the placement leader is, as this node's replica knows it.
    pub fn leader_address(&self) -> Option<String> {
        match self.leader_store()? {
            store if store == self.store_id => Some(self.address.clone()),
            store => self.directory.address(store),
        }
    }

    /// The leader's address, waiting up to `LEADER_WAIT` for one (an election), asking
    /// other nodes if this one has no replica of the group yet.
    pub async fn wait_leader(&self) -> Result<String, RequestError> {
        let started = Instant::now();
        let deadline = started + LEADER_WAIT;
        loop {
            if let Some(address) = self.leader_address() {
                return Ok(address);
            }
            // No replica of the group here (a node that just joined, or one being drained),
            // or none that knows a leader for a while: ask the others.
            let no_replica = self.registry.meta().status.is_none();
            if no_replica || started.elapsed() > Duration::from_millis(500) {
                if let Some(address) = self.ask_for_leader().await {
                    return Ok(address);
                }
            }
            if Instant::now() >= deadline {
                return Err(RequestError::Internal(
                    "no placement leader is known (an election may be in progress, or a \
                     majority of the placement group is unreachable)"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ask_for_leader(&self) -> Option<String> {
        let mut candidates: Vec<String> = self.seeds.clone();
        candidates.extend(self.read().stores().map(|s| s.address.clone()));
        for address in candidates.into_iter().filter(|a| *a != self.address) {
            let Ok(mut client) = self.clients.cluster(&address) else { continue };
            let call = tokio::time::timeout(FORWARD_TIMEOUT, client.info(InfoRequest {}));
            if let Ok(Ok(info)) = call.await {
                let info = info.into_inner();
                if !info.leader_address.is_empty() {
                    self.directory.heard_from(info.leader_store, &info.leader_address);
                    return Some(info.leader_address);
                }
            }
        }
        None
    }

    /// Proposes a placement command (on the leader, wherever it is) and waits for its
    /// result.
    pub async fn propose(&self, kind: Kind) -> Result<Response, RequestError> {
        let command = Command::new(kind).encode_to_vec();
        let mut hint: Option<String> = None;
        for _ in 0..4 {
            if self.registry.meta().is_leader {
                match self.propose_local(command.clone()).await {
                    Err(RequestError::Region(_)) => {}
                    other => return other,
                }
            }
            let address = match hint.take() {
                Some(address) => address,
                None => self.wait_leader().await?,
            };
            if address == self.address {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let mut client = self.clients.cluster(&address).map_err(RequestError::Internal)?;
            let request =
                ProposeMetaRequest { cluster_id: self.cluster_id(), command: command.clone() };
            let reply = tokio::time::timeout(FORWARD_TIMEOUT, client.propose_meta(request)).await;
            match reply {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    if !reply.error.is_empty() {
                        if !reply.leader_address.is_empty() {
                            hint = Some(reply.leader_address);
                            continue;
                        }
                        return Err(RequestError::Internal(reply.error));
                    }
                    let record = ResponseRecord::decode(reply.response.as_slice())
                        .map_err(|e| RequestError::Internal(e.to_string()))?;
                    return into_result(record.into());
                }
                Ok(Err(status)) => {
                    tracing::debug!(%status, "forwarding to the placement leader failed")
                }
                Err(_) => tracing::debug!("forwarding to the placement leader timed out"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(RequestError::Internal("the placement leader could not be reached".into()))
    }

    /// Proposes an encoded placement command to the local replica, which must lead.
    /// A `Region` error means it does not (any more).
    pub async fn propose_local(&self, command: Vec<u8>) -> Result<Response, RequestError> {
        match self.raft.propose(META_GROUP_ID, command).await? {
            ApplyOutput::Meta(output) => match output.downcast::<Response>() {
                Ok(response) => into_result(*response),
                Err(_) => Err(RequestError::Internal("unexpected placement output".into())),
            },
            other => Err(RequestError::Internal(format!("unexpected placement output {other:?}"))),
        }
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.read().cluster_id()
    }

    /// Reserves `count` consecutive ids and returns the first.
    pub async fn alloc_ids(&self, count: u64) -> Result<u64, RequestError> {
        match self.propose(Kind::AllocIds(count)).await? {
            Response::Ids { first } => Ok(first),
            other => Err(RequestError::Internal(format!("unexpected allocation result {other:?}"))),
        }
    }

    /// Records Regions' new shapes in one command (stale reports are ignored), so a
    /// lookup sees all of them or none: reported one by one, the halves of a split would
    /// leave a moment when one half's keys have no Region.
    pub async fn put_regions(&self, regions: Vec<Region>) -> Result<(), RequestError> {
        self.propose(Kind::PutRegions(Regions { regions })).await.map(|_| ())
    }

    /// Records Regions' shapes and leaders in one command.
    pub async fn report_regions(&self, reports: Vec<RegionReport>) -> Result<(), RequestError> {
        self.propose(Kind::ReportRegions(Reports { reports })).await.map(|_| ())
    }

    /// Issues `count` timestamps and returns the largest, from the placement leader.
    pub async fn timestamp(self: &Arc<Self>, count: u32) -> Result<TimeStamp, RequestError> {
        let metrics = &crate::metrics::METRICS;
        metrics.tso_requests.inc();
        metrics.tso_batch.observe(f64::from(count));
        let started = std::time::Instant::now();
        let result = self.timestamp_anywhere(count).await;
        metrics.tso_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn timestamp_anywhere(self: &Arc<Self>, count: u32) -> Result<TimeStamp, RequestError> {
        // Until a leader hands one out or LEADER_WAIT passes: the old leader's node may be
        // gone (its connection refused at once, many times) until the election ends,
        // and an error ends tikv-client's timestamp stream, which it opens again only a
        // second later.
        let deadline = Instant::now() + LEADER_WAIT;
        let (mut hint, mut hints): (Option<String>, u32) = (None, 0);
        while Instant::now() < deadline {
            if self.registry.meta().is_leader {
                match self.timestamp_local(count).await {
                    Err(RequestError::Region(_)) => {}
                    other => return other,
                }
            }
            let address = match hint.take() {
                Some(address) => address,
                None => self.wait_leader().await?,
            };
            if address == self.address {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let mut client = self.clients.cluster(&address).map_err(RequestError::Internal)?;
            let request = TimestampRequest { cluster_id: self.cluster_id(), count };
            match tokio::time::timeout(FORWARD_TIMEOUT, client.timestamp(request)).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    if reply.error.is_empty() {
                        return Ok(TimeStamp(reply.timestamp));
                    }
                    if !reply.leader_address.is_empty() {
                        // The first hint at once; hints that lead on (views of a
                        // leadership change that disagree) after a pause.
                        hints += 1;
                        if hints > 1 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        hint = Some(reply.leader_address);
                        continue;
                    }
                    // A node that knows no leader either (an election): ask again.
                    if reply.error != NOT_PLACEMENT_LEADER {
                        return Err(RequestError::Internal(reply.error));
                    }
                }
                Ok(Err(status)) => tracing::debug!(%status, "timestamp from the leader failed"),
                Err(_) => tracing::debug!("timestamp from the leader timed out"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(RequestError::Internal("no placement leader could hand out timestamps".into()))
    }

    /// Issues timestamps on this node, which must lead the placement group (a `Region`
    /// error if it does not). Only under the lease: a leader that cannot prove it still
    /// leads (a partition, a pause) must not hand out timestamps a newer leader may
    /// already have passed.
    pub async fn timestamp_local(self: &Arc<Self>, count: u32) -> Result<TimeStamp, RequestError> {
        let meta = self.registry.meta();
        let Some(status) = meta.status.filter(|s| s.ready_for_reads) else {
            return Err(scandium_raftstore::RaftstoreError::NotLeader {
                region_id: META_GROUP_ID,
                leader: None,
            }
            .into());
        };
        let under_lease = status.lease_valid(monotonic_ms());
        if !under_lease {
            // Confirm leadership with a quorum (which renews the lease).
            self.raft.read_index(META_GROUP_ID).await?;
        }
        // Timestamps handed out under the lease stand only if they were taken within it:
        // a pause after the check can outlast it, and a newer leader pass them.
        let within_lease = || !under_lease || monotonic_ms() < status.lease_until_ms;
        for _ in 0..3 {
            let Allocation { result, wanted_limit: wanted } = {
                let mut tso = self.tso.lock().unwrap_or_else(|e| e.into_inner());
                let now = now_ms().saturating_add_signed(self.clock_offset_ms);
                tso.allocate(status.term, || self.read().tso_limit_ms(), now, count)
            };
            match result {
                Ok(ts) => {
                    if let Some(limit) = wanted {
                        self.raise_limit_in_background(limit);
                    }
                    if !within_lease() {
                        let error = scandium_raftstore::RaftstoreError::NotLeader {
                            region_id: META_GROUP_ID,
                            leader: None,
                        };
                        return Err(error.into());
                    }
                    return Ok(ts);
                }
                Err(TsoError::LimitReached(limit)) => self.raise_limit(limit, status.term).await?,
                Err(e @ TsoError::BadCount(_)) => return Err(RequestError::invalid(e.to_string())),
            }
        }
        Err(RequestError::Internal("timestamp high-water mark could not be raised".into()))
    }

    async fn raise_limit(&self, limit: u64, term: u64) -> Result<(), RequestError> {
        let command = Command::new(Kind::RaiseTsoLimit(limit)).encode_to_vec();
        if let Response::TsoLimit(persisted) = self.propose_local(command).await? {
            self.tso.lock().unwrap_or_else(|e| e.into_inner()).set_limit(term, persisted);
        }
        Ok(())
    }

    fn raise_limit_in_background(self: &Arc<Self>, limit: u64) {
        if self.raising_limit.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(term) = self.registry.meta().status.map(|s| s.term) else {
            self.raising_limit.store(false, Ordering::Release);
            return;
        };
        let placement = self.clone();
        self.tasks.spawn(async move {
            if let Err(error) = placement.raise_limit(limit, term).await {
                tracing::warn!(%error, "could not raise the timestamp high-water mark");
            }
            placement.raising_limit.store(false, Ordering::Release);
        });
    }

    /// Raises the GC safe point and returns the safe point now in force.
    pub async fn update_gc_safe_point(&self, safe_point: u64) -> Result<u64, RequestError> {
        match self.propose(Kind::UpdateGcSafePoint(safe_point)).await? {
            Response::GcSafePoint(now) => Ok(now),
            other => Err(RequestError::Internal(format!("unexpected safe point result {other:?}"))),
        }
    }
}

fn into_result(response: Response) -> Result<Response, RequestError> {
    match response {
        Response::Invalid(reason) => Err(RequestError::Internal(reason)),
        response => Ok(response),
    }
}
