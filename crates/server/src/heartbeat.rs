//! Heartbeats: how the placement leader learns which stores are alive, which Regions
//! each leads and how their replicas are doing, and how it tells Region leaders what to
//! change.
//!
//! Every node sends one heartbeat a second (and at once after a leadership or Region
//! change here) to the placement leader, listing the Regions it leads. The leader notes
//! the store alive, records in the placement group's log whatever changed (a Region's
//! shape, its leader and term), and answers with one membership step per Region that
//! needs one ([`scandium_placement::scheduler`]), which the Region's leader proposes. The
//! placement group itself is scheduled by its own leader, from its own Raft state.

use crate::context::NodeContext;
use crate::error::RequestError;
use prost::Message as _;
use scandium_placement::scheduler::{self, Decision, Liveness, RegionHealth, SchedulerConfig};
use scandium_placement::RegionReport;
use scandium_protocol::scandium::{HeartbeatRequest, Operator, RegionHeartbeat};
use scandium_raftstore::{PeerChange, RegionStatus, META_GROUP_ID};
use scandium_types::{Peer, Region, StoreId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an operator for a Region is given before the scheduler may issue another
/// one for the same epoch.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Operator kinds on the wire.
const ADD_LEARNER: u32 = 1;
const PROMOTE: u32 = 2;
const REMOVE: u32 = 3;
const TRANSFER_LEADER: u32 = 4;

/// What the placement leader knows beyond the placement state: when each store was last
/// heard from, and which operators it issued lately.
pub struct Coordinator {
    config: SchedulerConfig,
    heard: Mutex<BTreeMap<StoreId, u64>>,
    /// Region id to the epoch (`conf_ver`) an operator was issued at, and when.
    issued: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl Coordinator {
    /// A coordinator judging stores by `config`.
    pub fn new(config: SchedulerConfig) -> Coordinator {
        Coordinator { config, heard: Mutex::default(), issued: Mutex::default() }
    }

    /// Notes a heartbeat from `store`.
    pub fn heard(&self, store: StoreId) {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store, crate::clock::monotonic_ms());
    }

    /// Stores' liveness as of now.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            last_heartbeat_ms: self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            now_ms: crate::clock::monotonic_ms(),
        }
    }

    /// How stores are judged.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Whether an operator for `region` may be issued now (none issued for its current
    /// epoch lately); if so, records that one is.
    fn may_issue(&self, region: &Region) -> bool {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        match issued.get(&region.id) {
            Some((conf_ver, at))
                if *conf_ver == region.conf_ver && at.elapsed() < OPERATOR_TIMEOUT =>
            {
                false
            }
            _ => {
                issued.insert(region.id, (region.conf_ver, Instant::now()));
                true
            }
        }
    }
}

/// Sends heartbeats forever: every `interval`, and soon after `node.heartbeat_now` is
/// notified.
pub async fn run(node: Arc<NodeContext>, interval: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = node.heartbeat_now.notified() => {
                // Let a burst of changes (a node's Regions all changing leader) go together.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        node.placement.cut_off();
        if let Err(error) = beat(&node).await {
            tracing::debug!(%error, "heartbeat failed");
        }
    }
}

/// One heartbeat: report the Regions led here, carry out the answer.
pub async fn beat(node: &Arc<NodeContext>) -> Result<(), RequestError> {
    let regions: Vec<RegionHeartbeat> = node
        .registry
        .all()
        .into_iter()
        .filter(|s| s.ready_for_reads)
        .map(|status| RegionHeartbeat {
            report: report_of(&status).encode_to_vec(),
            pending_peers: status.pending_peers.iter().map(|p| p.id).collect(),
        })
        .collect();
    let request =
        HeartbeatRequest { cluster_id: node.cluster_id(), store_id: node.store_id, regions };
    let operators = if node.placement.is_serving() {
        let operators = handle(node, request).await?;
        schedule_meta(node).await;
        operators
    } else {
        let address = node.placement.wait_leader().await?;
        let mut client = node.clients.cluster(&address).map_err(RequestError::Internal)?;
        let call = tokio::time::timeout(Duration::from_secs(2), client.heartbeat(request));
        let reply = call
            .await
            .map_err(|_| RequestError::Internal("heartbeat timed out".into()))?
            .map_err(|s| RequestError::Internal(s.message().to_string()))?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(RequestError::Internal(reply.error));
        }
        reply.operators
    };
    for operator in operators {
        let node = node.clone();
        node.clone().tasks.spawn(async move { execute(&node, operator).await });
    }
    Ok(())
}

fn report_of(status: &RegionStatus) -> RegionReport {
    RegionReport {
        region: Some(status.region.clone()),
        leader_peer_id: status.peer.id,
        term: status.term,
    }
}

/// The placement leader's side of a heartbeat: record what changed, decide what to do.
pub async fn handle(
    node: &Arc<NodeContext>,
    request: HeartbeatRequest,
) -> Result<Vec<Operator>, RequestError> {
    node.coordinator.heard(request.store_id);
    let mut reports = Vec::with_capacity(request.regions.len());
    for heartbeat in request.regions {
        let Ok(report) = RegionReport::decode(heartbeat.report.as_slice()) else { continue };
        if report.region.is_some() {
            reports.push((report, heartbeat.pending_peers));
        }
    }
    let changed: Vec<RegionReport> = {
        let state = node.placement.read();
        reports
            .iter()
            .map(|(report, _)| report)
            .filter(|report| {
                let region = report.region.as_ref().expect("checked above");
                let known = state.region(region.id).map(|r| r.epoch());
                let leader = state.leader_record(region.id).map(|l| (l.peer_id, l.term));
                known != Some(region.epoch())
                    || leader != Some((report.leader_peer_id, report.term))
            })
            .cloned()
            .collect()
    };
    if !changed.is_empty() {
        node.placement.report_regions(changed).await?;
    }
    let live = node.coordinator.liveness();
    let mut decisions = Vec::new();
    {
        let state = node.placement.read();
        for (report, pending) in &reports {
            let region = report.region.as_ref().expect("checked above");
            let health = RegionHealth { leader: report.leader_peer_id, pending: pending.clone() };
            let decision =
                scheduler::decide(&state, &live, node.coordinator.config(), region, &health, false);
            if let Some(decision) = decision {
                if node.coordinator.may_issue(region) {
                    decisions.push((region.id, decision));
                }
            }
        }
    }
    let mut operators = Vec::with_capacity(decisions.len());
    for (region_id, decision) in decisions {
        operators.push(to_operator(node, region_id, decision).await?);
    }
    Ok(operators)
}

async fn to_operator(
    node: &NodeContext,
    region_id: u64,
    decision: Decision,
) -> Result<Operator, RequestError> {
    let encode = |peers: Vec<Peer>| peers.iter().map(|p| p.encode_to_vec()).collect();
    Ok(match decision {
        Decision::AddLearner(store) => {
            let id = node.placement.alloc_ids(1).await?;
            Operator { region_id, kind: ADD_LEARNER, peers: encode(vec![Peer::learner(id, store)]) }
        }
        Decision::Promote(peers) => Operator { region_id, kind: PROMOTE, peers: encode(peers) },
        Decision::Remove(peer) => Operator { region_id, kind: REMOVE, peers: encode(vec![peer]) },
        Decision::TransferLeader(peer) => {
            Operator { region_id, kind: TRANSFER_LEADER, peers: encode(vec![peer]) }
        }
    })
}

/// Drained (`Offline`) stores that hold no replica any more become tombstones.
async fn retire_drained_stores(node: &Arc<NodeContext>) {
    let drained: Vec<StoreId> = {
        let state = node.placement.read();
        let meta_peers = node.registry.meta().status.map(|s| s.region.peers).unwrap_or_default();
        state
            .stores()
            .filter(|s| s.state() == scandium_types::StoreState::Offline)
            .filter(|s| state.regions().all(|r| r.peer_on_store(s.id).is_none()))
            .filter(|s| meta_peers.iter().all(|p| p.store_id != s.id))
            .map(|s| s.id)
            .collect()
    };
    for store_id in drained {
        let change = scandium_placement::StoreStateChange {
            store_id,
            state: scandium_types::StoreState::Tombstone as i32,
        };
        match node.placement.propose(scandium_placement::Kind::SetStoreState(change)).await {
            Ok(_) => tracing::info!(
                store_id,
                "a drained store holds no replica any more: it is now a tombstone"
            ),
            Err(error) => tracing::debug!(store_id, %error, "cannot retire store yet"),
        }
    }
}

/// The placement leader schedules its own group from its own view of it.
async fn schedule_meta(node: &Arc<NodeContext>) {
    retire_drained_stores(node).await;
    let Some(status) = node.registry.meta().status.filter(|s| s.ready_for_reads) else { return };
    let live = node.coordinator.liveness();
    let decision = {
        let state = node.placement.read();
        let health = RegionHealth {
            leader: status.peer.id,
            pending: status.pending_peers.iter().map(|p| p.id).collect(),
        };
        scheduler::decide(&state, &live, node.coordinator.config(), &status.region, &health, true)
    };
    let Some(decision) = decision else { return };
    if !node.coordinator.may_issue(&status.region) {
        return;
    }
    match to_operator(node, META_GROUP_ID, decision).await {
        Ok(operator) => execute(node, operator).await,
        Err(error) => tracing::debug!(%error, "cannot schedule the placement group"),
    }
}

/// Carries out an operator on the Region's local leader.
async fn execute(node: &Arc<NodeContext>, operator: Operator) {
    let peers: Vec<Peer> =
        operator.peers.iter().filter_map(|bytes| Peer::decode(bytes.as_slice()).ok()).collect();
    let region = operator.region_id;
    let result = match (operator.kind, peers.as_slice()) {
        (ADD_LEARNER, [peer]) => node
            .raft
            .change_peers(region, vec![PeerChange::AddLearner(peer.clone())])
            .await
            .map(|_| ()),
        (PROMOTE, peers) if !peers.is_empty() => {
            let changes = peers.iter().map(|p| PeerChange::AddVoter(p.clone())).collect();
            node.raft.change_peers(region, changes).await.map(|_| ())
        }
        (REMOVE, [peer]) => {
            node.raft.change_peers(region, vec![PeerChange::Remove(peer.clone())]).await.map(|_| ())
        }
        (TRANSFER_LEADER, [peer]) => {
            let peer_id = peer.id;
            node.raft
                .with_store(move |store| store.transfer_leader(region, peer_id))
                .await
                .and_then(|r| r)
        }
        _ => {
            tracing::warn!(region, kind = operator.kind, "malformed operator");
            return;
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(region, kind = operator.kind, peers = ?peers, "carried out a placement operator");
            node.heartbeat_now.notify_one();
        }
        Err(error) => tracing::debug!(region, %error, "placement operator not carried out"),
    }
}
