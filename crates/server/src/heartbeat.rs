//! Heartbeats: the server's driver of the control plane (`scandium_placement::control`).
//!
//! Every node sends one heartbeat a second (and at once after a leadership or Region
//! change here) to the placement leader: its store, and of the Regions it leads those the
//! placement leader needs (`scandium_placement::filter`: what changed, has traffic, is
//! watched or takes its turn; shape, leader, term, lagging peers, size and the bytes and
//! keys written and read since the last heartbeat). The placement leader hands them to its
//! [`ControlPlane`], records in the placement group's log what changed (in one
//! `ReportRegions`), allocates ids for new replicas when it runs low, and answers with the
//! operator steps for the sender's Regions, which the sender carries out as membership
//! changes or leader transfers, each only if its Region is still at the epoch the step was
//! planned against. On its own beat the leader also schedules the placement group itself
//! and proposes what the control plane's clock wants (the stores' last heartbeats, drained
//! stores retired).

use crate::error::RequestError;
use crate::flow::ReadFlow;
use crate::identity::Identity;
use crate::network::Clients;
use crate::placement::Placement;
use crate::raft_driver::RaftHandle;
use crate::tasks::Tasks;
use prost::Message as _;
use scandium_placement::{
    ControlPlane, Facts, HeartbeatFilter, Kind, Look, Now, OperatorStep,
    RegionHeartbeat as Heartbeat, RegionLoad, RegionReport, Selection, StepAction, Wants,
};
use scandium_protocol::scandium::{
    self as wire, HeartbeatRequest, Operator, RegionHeartbeat, RegionLoadsRequest, StoreLiveness,
};
use scandium_raftstore::{PeerChange, RegionStatus, Registry, META_GROUP_ID};
use scandium_types::{Peer, RegionEpoch};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The most Regions whose loads one call asks for: a page of `/pd/api/v1/regions` at most.
pub const MAX_LOADS_ASKED: usize = 10_000;

/// Operator step kinds on the wire.
const ADD_LEARNER: u32 = 1;
const PROMOTE: u32 = 2;
const REMOVE: u32 = 3;
const TRANSFER_LEADER: u32 = 4;
/// `peers` holds the target Region, encoded.
const MERGE: u32 = 5;

/// This node's side of the control plane: its heartbeats and the operator steps they bring
/// back, and, while it leads the placement group, the control plane itself.
pub struct Control {
    /// The placement leader's state (idle unless this node leads).
    plane: Mutex<ControlPlane>,
    identity: Identity,
    placement: Arc<Placement>,
    registry: Registry,
    raft: RaftHandle,
    clients: Arc<Clients>,
    tasks: Tasks,
    beat_now: Arc<Notify>,
    reads: Arc<ReadFlow>,
    /// What the last heartbeat reported, to send differences.
    traffic: Mutex<Traffic>,
    /// Which Regions the next heartbeat reports.
    reporting: Mutex<Reporting>,
    /// Region reports taken as placement leader (the metric is the process's).
    reports_taken: std::sync::atomic::AtomicU64,
}

/// What this node told which placement leader.
#[derive(Default)]
struct Reporting {
    filter: HeartbeatFilter,
    /// The placement leader's address, or `None` for this node.
    target: Option<String>,
}

/// The write counters of the Regions led here at the last heartbeat, and when it was.
/// Kept from beat to beat rather than built anew: at 10,000 led Regions, a new map and a
/// list of loads each second were a megabyte allocated and freed a second, at rest.
#[derive(Default)]
struct Traffic {
    /// When the last heartbeat was (0: there was none).
    at_ms: u64,
    /// Heartbeats reckoned so far.
    beat: u64,
    written: HashMap<u64, Written>, // lookups only
}

/// A Region's write counters at a heartbeat that it was led at.
#[derive(Clone, Copy)]
struct Written {
    bytes: u64,
    keys: u64,
    beat: u64,
}

/// One heartbeat's reckoning of the loads of the Regions led here (see
/// [`Control::reckon`]), Region by Region as the heartbeat filter looks at them. A Region
/// the beat does not look at published nothing since it was last looked at: it wrote
/// nothing, and its counters stay as they were.
struct Reckoning<'a> {
    traffic: MutexGuard<'a, Traffic>,
    /// What was read per Region since the last heartbeat.
    reads: HashMap<u64, (u64, u64)>, // lookups only
    /// The Regions this beat looks at.
    look: &'a Look,
    now_ms: u64,
    /// Since the last heartbeat; `None` for the first.
    interval_ms: Option<u64>,
    /// Regions reckoned so far.
    led: usize,
}

impl<'a> Reckoning<'a> {
    /// The reckoning of the heartbeat at `now_ms`.
    fn start(
        mut traffic: MutexGuard<'a, Traffic>,
        reads: HashMap<u64, (u64, u64)>,
        look: &'a Look,
        now_ms: u64,
    ) -> Reckoning<'a> {
        traffic.beat += 1;
        let interval_ms = (traffic.at_ms > 0).then(|| now_ms.saturating_sub(traffic.at_ms));
        Reckoning { traffic, reads, look, now_ms, interval_ms, led: 0 }
    }

    /// The Region's size, and what was written to and read from it since the last
    /// heartbeat (a Region that was not led here then counts from now).
    fn load(&mut self, status: &RegionStatus) -> RegionLoad {
        let (stats, id, beat) = (&status.stats, status.region.id, self.traffic.beat);
        self.led += 1;
        let now = Written { bytes: stats.written_bytes, keys: stats.written_keys, beat };
        // Counted since the last look, which was the last beat if it wrote (writing
        // publishes); a Region not led here then was forgotten when it was looked at.
        let (written_bytes, written_keys) = match self.traffic.written.insert(id, now) {
            Some(last) if self.interval_ms.is_some() => {
                (now.bytes.saturating_sub(last.bytes), now.keys.saturating_sub(last.keys))
            }
            _ => (0, 0),
        };
        let (read_keys, read_bytes) = self.reads.remove(&id).unwrap_or_default();
        RegionLoad {
            approximate_size: stats.approximate_size,
            approximate_keys: stats.approximate_keys,
            written_bytes,
            written_keys,
            read_bytes,
            read_keys,
            interval_ms: self.interval_ms.unwrap_or(0),
        }
    }
}

impl Drop for Reckoning<'_> {
    /// The heartbeat is reckoned: the Regions it looked at and found no longer led here
    /// are forgotten (after a full beat, every one not led here).
    fn drop(&mut self) {
        let beat = self.traffic.beat;
        let traffic = &mut *self.traffic;
        match self.look.ids() {
            Some(ids) => {
                for id in ids {
                    if traffic.written.get(id).is_some_and(|written| written.beat != beat) {
                        traffic.written.remove(id);
                    }
                }
            }
            None if traffic.written.len() > self.led => {
                traffic.written.retain(|_, written| written.beat == beat);
            }
            None => {}
        }
        traffic.at_ms = self.now_ms;
    }
}

/// What [`Control`] is built from.
pub struct ControlParts {
    /// Who this node is.
    pub identity: Identity,
    /// The placement group.
    pub placement: Arc<Placement>,
    /// Regions with a replica here (those led here are reported).
    pub registry: Registry,
    /// Membership changes and leader transfers, to the Raft thread.
    pub raft: RaftHandle,
    /// Channels to the placement leader.
    pub clients: Arc<Clients>,
    /// Where operator steps run.
    pub tasks: Tasks,
    /// Notified to send a heartbeat now (leadership or a Region changed here).
    pub beat_now: Arc<Notify>,
    /// Reads served here per Region, taken by each heartbeat.
    pub reads: Arc<ReadFlow>,
}

/// The placement leader's clocks.
fn now() -> Now {
    Now { monotonic_ms: crate::clock::monotonic_ms(), wall_ms: crate::clock::now_ms() }
}

impl Control {
    /// The control plane of this node, judging by `plane`'s settings.
    pub fn new(plane: ControlPlane, parts: ControlParts) -> Control {
        let ControlParts { identity, placement, registry, raft, clients, tasks, beat_now, reads } =
            parts;
        Control {
            plane: Mutex::new(plane),
            identity,
            placement,
            registry,
            raft,
            clients,
            tasks,
            beat_now,
            reads,
            traffic: Mutex::new(Traffic::default()),
            reporting: Mutex::new(Reporting::default()),
            reports_taken: Default::default(),
        }
    }

    /// The control plane, locked (never across an await).
    fn lock(&self) -> MutexGuard<'_, ControlPlane> {
        self.plane.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends heartbeats forever: every `interval`, and soon after `beat_now` is notified.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.beat_now.notified() => {
                    // Let a burst of changes (a node's Regions all changing leader) go
                    // together.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            self.placement.cut_off();
            if let Err(error) = self.beat().await {
                tracing::debug!(%error, "heartbeat failed");
            }
        }
    }

    /// One heartbeat: report the Regions led here that the placement leader needs
    /// (`scandium_placement::filter`), carry out the answer.
    pub async fn beat(self: &Arc<Self>) -> Result<(), RequestError> {
        let target = match self.placement.is_serving() {
            true => None,
            false => {
                self.lock().step_down();
                Some(self.placement.wait_leader().await?)
            }
        };
        let selection = self.select(&target);
        let regions = selection
            .heartbeats
            .iter()
            .map(|(status, load)| RegionHeartbeat {
                report: report_of(status).encode_to_vec(),
                pending_peers: status.pending_peers.iter().map(|p| p.id).collect(),
                load: Some(wire_load(0, load)),
            })
            .collect();
        let request = HeartbeatRequest {
            cluster_id: self.identity.cluster_id,
            store_id: self.identity.store_id,
            regions,
            full: selection.full,
        };
        let (operators, wants) = match target {
            None => {
                let answer = self.handle(request).await?;
                self.lead().await;
                answer
            }
            Some(address) => {
                let mut client = self.clients.cluster(&address).map_err(RequestError::Internal)?;
                let call = tokio::time::timeout(Duration::from_secs(2), client.heartbeat(request));
                let reply = call
                    .await
                    .map_err(|_| RequestError::Internal("heartbeat timed out".into()))?
                    .map_err(|s| RequestError::Internal(s.message().to_string()))?
                    .into_inner();
                if !reply.error.is_empty() {
                    return Err(RequestError::Internal(reply.error));
                }
                // A placement leader from before the filter wants every Region each time.
                let all = reply.send_all || !reply.filters;
                (reply.operators, Wants { all, watch: reply.watch })
            }
        };
        let mut reporting = self.reporting.lock().unwrap_or_else(|e| e.into_inner());
        reporting.filter.answered(selection.seq, wants);
        drop(reporting);
        for operator in operators {
            let Some(step) = step_of(&operator) else {
                tracing::warn!(
                    region = operator.region_id,
                    kind = operator.kind,
                    "malformed operator"
                );
                continue;
            };
            let control = self.clone();
            self.tasks.spawn(async move { control.execute(step).await });
        }
        Ok(())
    }

    /// The led Regions this heartbeat reports to `target` (`None`: this node), each with
    /// its load since the last heartbeat.
    fn select(&self, target: &Option<String>) -> Selection<(Arc<RegionStatus>, RegionLoad)> {
        let reads = self.reads.take();
        let mut reporting = self.reporting.lock().unwrap_or_else(|e| e.into_inner());
        if reporting.target != *target {
            reporting.filter.reset();
            reporting.target = target.clone();
        }
        // What was published since the last beat, or read: the others have nothing new.
        let changed = self.registry.take_changed().into_iter().chain(reads.keys().copied());
        let look = reporting.filter.begin(changed);
        let led = self.registry.led(look.ids());
        let mut reckoning = self.reckon(reads, &look);
        let led = led.into_iter().map(|status| {
            let load = reckoning.load(&status);
            let facts = Facts {
                id: status.region.id,
                version: status.region.version,
                conf_ver: status.region.conf_ver,
                leader: status.peer.id,
                term: status.term,
                pending: status.pending_peers.iter().map(|p| p.id).collect(),
                size: load.approximate_size,
                keys: load.approximate_keys,
                traffic: load.has_traffic(),
            };
            (facts, (status, load))
        });
        let selection = reporting.filter.select_by(&look, led);
        // The Regions looked at and no longer led here are forgotten once every led one
        // was reckoned.
        drop(reckoning);
        selection
    }

    /// Starts this heartbeat's reckoning of the loads of the led Regions it looks at (the
    /// traffic stays locked until it is dropped).
    fn reckon<'a>(&'a self, reads: HashMap<u64, (u64, u64)>, look: &'a Look) -> Reckoning<'a> {
        let traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        Reckoning::start(traffic, reads, look, crate::clock::monotonic_ms())
    }

    /// How many Region reports this node took from heartbeats while it led placement.
    pub fn reports_taken(&self) -> u64 {
        self.reports_taken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads served here.
    pub fn reads(&self) -> &ReadFlow {
        &self.reads
    }

    /// The Regions' size and traffic as the placement leader knows them (only `ids`'
    /// if given): from this node's control plane if it leads, else asked of the leader
    /// (empty if it cannot be reached).
    pub async fn region_loads(&self, ids: Option<&[u64]>) -> BTreeMap<u64, RegionLoad> {
        if self.placement.is_serving() {
            return self.local_loads(ids);
        }
        let Some(mut client) = self.leader_client() else { return BTreeMap::new() };
        let region_ids = ids.map(<[u64]>::to_vec).unwrap_or_default();
        let request = RegionLoadsRequest { cluster_id: self.identity.cluster_id, region_ids };
        let call = tokio::time::timeout(Duration::from_secs(2), client.region_loads(request));
        match call.await {
            Ok(Ok(reply)) => {
                reply.into_inner().loads.iter().map(|l| (l.region_id, load_of(l))).collect()
            }
            _ => BTreeMap::new(),
        }
    }

    /// This node's control plane's loads, of `ids` or of every Region.
    fn local_loads(&self, ids: Option<&[u64]>) -> BTreeMap<u64, RegionLoad> {
        let plane = self.lock();
        let loads = plane.loads();
        match ids {
            None => loads.clone(),
            Some(ids) => ids.iter().filter_map(|id| Some((*id, *loads.get(id)?))).collect(),
        }
    }

    /// A client of the placement leader's node, if one is known.
    fn leader_client(
        &self,
    ) -> Option<scandium_protocol::scandium::cluster_client::ClusterClient<tonic::transport::Channel>>
    {
        let address = self.placement.leader_address()?;
        self.clients.cluster(&address).ok()
    }

    /// The Regions' size and traffic (of `ids`, or all if empty), answered to another
    /// node; `None` if this node does not lead placement.
    pub fn local_region_loads(&self, ids: &[u64]) -> Option<Vec<wire::RegionLoad>> {
        if !self.placement.is_serving() {
            return None;
        }
        let ids = (!ids.is_empty()).then_some(ids);
        Some(self.local_loads(ids).iter().map(|(&id, load)| wire_load(id, load)).collect())
    }

    /// The operators the placement leader runs: this node's if it leads, else asked of the
    /// leader. `None` if no leader answers.
    pub async fn operators(&self) -> Option<Vec<wire::OperatorInfo>> {
        if let Some(operators) = self.local_operators() {
            return Some(operators);
        }
        let mut client = self.leader_client()?;
        let request = wire::OperatorsRequest { cluster_id: self.identity.cluster_id };
        let call = tokio::time::timeout(Duration::from_secs(2), client.operators(request));
        match call.await {
            Ok(Ok(reply)) if reply.get_ref().error.is_empty() => Some(reply.into_inner().operators),
            _ => None,
        }
    }

    /// How many operators this node started and ended since it took over placement's
    /// leadership, if it leads placement.
    pub fn operator_counts(&self) -> Option<scandium_placement::OperatorCounts> {
        self.placement.is_serving().then(|| self.lock().counts())
    }

    /// The operators this node runs, if it leads placement.
    pub fn local_operators(&self) -> Option<Vec<wire::OperatorInfo>> {
        if !self.placement.is_serving() {
            return None;
        }
        let now_ms = now().monotonic_ms;
        let plane = self.lock();
        let operators = plane.operators().map(|operator| {
            let (step, number, steps) = operator.step();
            wire::OperatorInfo {
                region_id: operator.region_id(),
                kind: operator.kind().to_string(),
                step: step.map(|s| s.to_string()).unwrap_or_default(),
                step_number: number as u32,
                steps: steps as u32,
                step_age_ms: now_ms.saturating_sub(operator.step_started_ms()),
            }
        });
        Some(operators.collect())
    }

    /// Makes sure the control plane runs for the placement term this node leads now (a
    /// new leader takes over from what the log records). `None` if it does not lead.
    fn leading_term(&self) -> Option<u64> {
        let status = self.registry.meta().status.filter(|s| s.ready_for_reads)?;
        let mut plane = self.lock();
        if !plane.leads(status.term) {
            plane.take_over(status.term, &self.placement.read(), now());
            tracing::debug!(term = status.term, "the control plane runs here now");
        }
        Some(status.term)
    }

    /// The placement leader's side of a heartbeat: note the store alive, record what
    /// changed, answer with the steps of the Regions' operators.
    pub async fn handle(
        &self,
        request: HeartbeatRequest,
    ) -> Result<(Vec<Operator>, Wants), RequestError> {
        if self.leading_term().is_none() {
            return Err(RequestError::Internal("this node does not lead placement".into()));
        }
        let heartbeats: Vec<Heartbeat> = request
            .regions
            .iter()
            .filter_map(|h| {
                let report = RegionReport::decode(h.report.as_slice()).ok()?;
                let load = h.load.as_ref().map(load_of).unwrap_or_default();
                report.region.is_some().then(|| Heartbeat {
                    report,
                    pending: h.pending_peers.clone(),
                    load,
                })
            })
            .collect();
        let (intake, wants) = {
            let mut plane = self.lock();
            let now = now();
            let state = self.placement.read();
            let taken = heartbeats.len() as u64;
            crate::metrics::METRICS.region_reports.inc_by(taken);
            self.reports_taken.fetch_add(taken, std::sync::atomic::Ordering::Relaxed);
            plane.heartbeat(&state, request.store_id, &heartbeats, request.full, now)
        };
        if !intake.changed.is_empty() {
            self.placement.report_regions(intake.changed).await?;
        }
        self.supply_ids(&intake.need_ids).await;
        Ok((intake.steps.iter().map(operator_of).collect(), wants))
    }

    /// What this node, as placement leader, knows of each store's heartbeats.
    pub fn store_liveness(&self) -> Vec<StoreLiveness> {
        let plane = self.lock();
        let live = plane.liveness(now());
        self.placement
            .read()
            .stores()
            .map(|store| {
                let status = scandium_placement::scheduler::store_status(
                    store,
                    &live,
                    &plane.config().scheduler,
                );
                StoreLiveness {
                    store_id: store.id,
                    last_heartbeat_ms_ago: live
                        .last_heartbeat_ms
                        .get(&store.id)
                        .map_or(-1, |at| live.now_ms.saturating_sub(*at) as i64),
                    status: status.name().to_string(),
                }
            })
            .collect()
    }

    /// Allocates a peer id for each Region that needs a new replica (see
    /// `ControlPlane::supply_id`); their operators start at their next heartbeat.
    async fn supply_ids(&self, regions: &[u64]) {
        if regions.is_empty() {
            return;
        }
        let Some(term) = self.lock().term() else { return };
        match self.placement.alloc_ids(regions.len() as u64).await {
            Ok(first) => {
                let mut plane = self.lock();
                for (i, &region) in regions.iter().enumerate() {
                    plane.supply_id(region, first + i as u64, term);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot allocate ids for new replicas yet"),
        }
    }

    /// The placement leader's own beat: what the control plane's clock wants proposed,
    /// and the placement group's own operator.
    async fn lead(&self) {
        let Some(status) = self.registry.meta().status.filter(|s| s.ready_for_reads) else {
            return;
        };
        if self.leading_term().is_none() {
            return;
        }
        let (proposals, step, needs_id) = {
            let mut plane = self.lock();
            let state = self.placement.read();
            let now = now();
            let proposals = plane.tick(&state, &status.region.peers, now);
            let step = plane.meta_heartbeat(&state, &heartbeat_of(&status), now);
            (proposals, step, plane.meta_needs_id())
        };
        if needs_id {
            self.supply_ids(&[scandium_placement::control::META_ID]).await;
        }
        for kind in proposals {
            if let Err(error) = self.placement.propose(kind.clone()).await {
                tracing::debug!(%error, ?kind, "placement record not made yet");
            } else if let Kind::SetStoreState(change) = kind {
                tracing::info!(
                    store_id = change.store_id,
                    "a drained store holds no replica any more: it is now a tombstone"
                );
            }
        }
        if let Some(step) = step {
            self.execute(step).await;
        }
    }

    /// Carries out an operator step on the Region's local leader, if the Region is still
    /// at the epoch the step was planned against.
    async fn execute(&self, step: OperatorStep) {
        let region_id = step.region_id;
        let status = match region_id {
            META_GROUP_ID => self.registry.meta().status,
            id => self.registry.get(id),
        };
        let Some(status) = status else { return };
        if !step.applies_to(&status.region) {
            tracing::debug!(
                region_id,
                ?step,
                "operator step planned against another epoch: refused"
            );
            return;
        }
        let result = match &step.action {
            StepAction::TransferLeader(peer) => {
                let peer_id = peer.id;
                let transfer =
                    self.raft.with_store(move |store| store.transfer_leader(region_id, peer_id));
                transfer.await.and_then(|r| r)
            }
            StepAction::Merge(target) => {
                // Answered once the freeze applies; the operator sees it in the Region's
                // next heartbeat.
                let target = target.clone();
                let prepare = move |store: &mut scandium_raftstore::Store| {
                    let callback =
                        Box::new(move |result: Result<_, scandium_raftstore::RaftstoreError>| {
                            if let Err(error) = result {
                                tracing::debug!(region_id, %error, "merge not prepared");
                            }
                        });
                    store.propose_prepare_merge(region_id, target, callback)
                };
                self.raft.with_store(prepare).await
            }
            action => {
                let changes = peer_changes(action);
                self.raft.change_peers(region_id, changes, step.epoch).await.map(|_| ())
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(region_id, action = ?step.action, "carried out an operator step");
                self.beat_now.notify_one();
            }
            Err(error) => tracing::debug!(region_id, %error, "operator step not carried out"),
        }
    }
}

fn report_of(status: &RegionStatus) -> RegionReport {
    RegionReport {
        region: Some(status.region.clone()),
        leader_peer_id: status.peer.id,
        term: status.term,
    }
}

fn heartbeat_of(status: &RegionStatus) -> Heartbeat {
    Heartbeat {
        report: report_of(status),
        pending: status.pending_peers.iter().map(|p| p.id).collect(),
        load: RegionLoad::default(),
    }
}

fn wire_load(region_id: u64, load: &RegionLoad) -> wire::RegionLoad {
    wire::RegionLoad {
        region_id,
        approximate_size: load.approximate_size,
        approximate_keys: load.approximate_keys,
        written_bytes: load.written_bytes,
        written_keys: load.written_keys,
        read_bytes: load.read_bytes,
        read_keys: load.read_keys,
        interval_ms: load.interval_ms,
    }
}

fn load_of(load: &wire::RegionLoad) -> RegionLoad {
    RegionLoad {
        approximate_size: load.approximate_size,
        approximate_keys: load.approximate_keys,
        written_bytes: load.written_bytes,
        written_keys: load.written_keys,
        read_bytes: load.read_bytes,
        read_keys: load.read_keys,
        interval_ms: load.interval_ms,
    }
}

/// A membership step as the raftstore proposes it.
fn peer_changes(action: &StepAction) -> Vec<PeerChange> {
    match action {
        StepAction::AddLearner(peer) => vec![PeerChange::AddLearner(peer.clone())],
        StepAction::Promote(peers) => {
            peers.iter().map(|p| PeerChange::AddVoter(p.clone())).collect()
        }
        StepAction::Remove(peer) => vec![PeerChange::Remove(peer.clone())],
        StepAction::TransferLeader(_) | StepAction::Merge(_) => Vec::new(),
    }
}

fn operator_of(step: &OperatorStep) -> Operator {
    let encode = |peers: &[Peer]| peers.iter().map(|p| p.encode_to_vec()).collect();
    let (kind, peers) = match &step.action {
        StepAction::AddLearner(peer) => (ADD_LEARNER, encode(std::slice::from_ref(peer))),
        StepAction::Promote(peers) => (PROMOTE, encode(peers)),
        StepAction::Remove(peer) => (REMOVE, encode(std::slice::from_ref(peer))),
        StepAction::TransferLeader(peer) => (TRANSFER_LEADER, encode(std::slice::from_ref(peer))),
        StepAction::Merge(target) => (MERGE, vec![target.encode_to_vec()]),
    };
    Operator {
        region_id: step.region_id,
        kind,
        peers,
        conf_ver: step.epoch.conf_ver,
        version: step.epoch.version,
    }
}

fn step_of(operator: &Operator) -> Option<OperatorStep> {
    let epoch = RegionEpoch { conf_ver: operator.conf_ver, version: operator.version };
    if operator.kind == MERGE {
        let target = scandium_types::Region::decode(operator.peers.first()?.as_slice()).ok()?;
        let action = StepAction::Merge(target);
        return Some(OperatorStep { region_id: operator.region_id, epoch, action });
    }
    let peers: Vec<Peer> =
        operator.peers.iter().filter_map(|bytes| Peer::decode(bytes.as_slice()).ok()).collect();
    let action = match (operator.kind, peers.as_slice()) {
        (ADD_LEARNER, [peer]) => StepAction::AddLearner(peer.clone()),
        (PROMOTE, peers) if !peers.is_empty() => StepAction::Promote(peers.to_vec()),
        (REMOVE, [peer]) => StepAction::Remove(peer.clone()),
        (TRANSFER_LEADER, [peer]) => StepAction::TransferLeader(peer.clone()),
        _ => return None,
    };
    Some(OperatorStep { region_id: operator.region_id, epoch, action })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Region `id` led here, having had `written` bytes (and as many keys) written.
    fn led(id: u64, written: u64) -> RegionStatus {
        let mut status = RegionStatus::default();
        status.region.id = id;
        status.stats.written_bytes = written;
        status.stats.written_keys = written;
        status
    }

    /// A beat's look: at `ids` only, or (`None`) at every led Region.
    fn look(ids: Option<&[u64]>) -> Look {
        let mut filter = HeartbeatFilter::new(1_000);
        let Some(ids) = ids else { return filter.begin([]) };
        let first = filter.begin([]);
        filter.select_by(&first, Vec::<(Facts, ())>::new());
        filter.answered(first.seq(), Wants::default());
        filter.begin(ids.iter().copied())
    }

    /// One heartbeat at `now_ms` that looks at `ids` (`None`: all), over the Regions led
    /// here among them: each one's bytes written and interval.
    fn beat(
        traffic: &Mutex<Traffic>,
        now_ms: u64,
        ids: Option<&[u64]>,
        regions: &[RegionStatus],
    ) -> Vec<(u64, u64)> {
        let (reads, look) = (HashMap::new(), look(ids));
        let mut reckoning = Reckoning::start(traffic.lock().unwrap(), reads, &look, now_ms);
        regions
            .iter()
            .map(|s| reckoning.load(s))
            .map(|l| (l.written_bytes, l.interval_ms))
            .collect()
    }

    #[test]
    fn each_heartbeat_reports_what_was_written_since_the_last_one_a_region_was_led_at() {
        let traffic = Mutex::new(Traffic::default());
        let all = None;
        // The first heartbeat has no interval: nothing counts as written.
        assert_eq!(beat(&traffic, 1_000, all, &[led(1, 50), led(2, 70)]), [(0, 0), (0, 0)]);
        let regions = [led(1, 80), led(2, 70)];
        assert_eq!(beat(&traffic, 2_000, all, &regions), [(30, 1_000), (0, 1_000)]);
        // Region 2 is not led here for a beat: it is forgotten, and counts afresh.
        assert_eq!(beat(&traffic, 3_000, all, &[led(1, 80)]), [(0, 1_000)]);
        assert_eq!(traffic.lock().unwrap().written.len(), 1);
        let regions = [led(1, 81), led(2, 90)];
        assert_eq!(beat(&traffic, 4_000, all, &regions), [(1, 1_000), (0, 1_000)]);
        let regions = [led(1, 81), led(2, 95)];
        assert_eq!(beat(&traffic, 5_000, all, &regions), [(0, 1_000), (5, 1_000)]);
    }

    /// A beat that looks only at what changed counts a Region's writes from the last look
    /// at it (it published nothing in between, so wrote nothing), and forgets one it
    /// looked at and found not led.
    #[test]
    fn a_region_left_out_of_beats_counts_from_its_last_look() {
        let traffic = Mutex::new(Traffic::default());
        beat(&traffic, 1_000, None, &[led(1, 50), led(2, 70)]);
        assert_eq!(beat(&traffic, 2_000, Some(&[1]), &[led(1, 60)]), [(10, 1_000)]);
        assert_eq!(beat(&traffic, 3_000, Some(&[]), &[]), []);
        // Region 2 wrote, and published: looked at again, two beats after the last look.
        assert_eq!(beat(&traffic, 4_000, Some(&[2]), &[led(2, 75)]), [(5, 1_000)]);
        // Region 1 is looked at and not led: forgotten; Region 2 is kept.
        assert_eq!(beat(&traffic, 5_000, Some(&[1]), &[]), []);
        assert!(!traffic.lock().unwrap().written.contains_key(&1));
        assert!(traffic.lock().unwrap().written.contains_key(&2));
        assert_eq!(beat(&traffic, 6_000, Some(&[1]), &[led(1, 90)]), [(0, 1_000)], "afresh");
    }
}
