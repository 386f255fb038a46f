//! `scandium.Cluster`: the node-to-node service (Raft transport, joining, forwarding to
//! the placement leader, heartbeats). Requests naming another cluster are refused and
//! counted, never acted on.

use crate::commands::Storage;
use crate::error::RequestError;
use crate::heartbeat::{Control, MAX_LOADS_ASKED};
use crate::identity::Identity;
use crate::network::{Directory, Links};
use crate::placement::{Placement, NOT_PLACEMENT_LEADER};
use crate::raft_driver::RaftHandle;
use crate::tls::PeerIdentity;
use crate::transport::{snapshot_receive_deadline, snapshot_stall, RECEIVER_BUSY};
use prost::Message as _;
use scandium_placement::{Command, Kind, Response as PlacementResponse, ResponseRecord};
use scandium_protocol::scandium::cluster_server::Cluster;
use scandium_protocol::scandium::*;
use scandium_raftstore::snapshot::{SnapshotChunk as DataChunk, SnapshotError, Stager, Staging};
use scandium_raftstore::{PeerMessage, RaftstoreError, RegionStatus, Registry, META_GROUP_ID};
use scandium_types::{Store, StoreState, TimeStamp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

/// The node-to-node service of one node.
pub struct ClusterService {
    parts: ClusterParts,
    snapshots: Arc<Semaphore>,
}

/// What [`ClusterService`] serves with.
pub struct ClusterParts {
    /// Who this node is.
    pub identity: Identity,
    /// The placement group (joins, forwarded proposals and timestamps).
    pub placement: Arc<Placement>,
    /// The Raft thread, which other nodes' messages and snapshots are stepped into.
    pub raft: RaftHandle,
    /// Regions with a replica here (leader transfers).
    pub registry: Registry,
    /// Where other stores are: learned from who sends here.
    pub directory: Arc<Directory>,
    /// Links to other nodes (tests cut them).
    pub links: Arc<Links>,
    /// Messages and requests refused: from another cluster, for another store,
    /// malformed, or dropped because the Raft thread was saturated.
    pub refused: Arc<AtomicU64>,
    /// The control plane, for heartbeats and store liveness.
    pub control: Arc<Control>,
    /// Reads of transactions' keys for lock resolution on other nodes.
    pub storage: Arc<Storage>,
    /// The largest snapshot this node accepts.
    pub max_snapshot_bytes: u64,
    /// Where received snapshots are staged on disk until installed.
    pub stager: Stager,
    /// Snapshots received at once at most.
    pub max_concurrent_snapshots: usize,
}

impl ClusterService {
    /// Serves with `parts`.
    pub fn new(parts: ClusterParts) -> ClusterService {
        let snapshots = Arc::new(Semaphore::new(parts.max_concurrent_snapshots));
        ClusterService { parts, snapshots }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Box<Status>> {
        let ours = self.parts.identity.cluster_id;
        if cluster_id == ours {
            return Ok(());
        }
        self.parts.refused.fetch_add(1, Ordering::Relaxed);
        Err(Box::new(Status::failed_precondition(format!(
            "request for cluster {cluster_id} reached a node of cluster {ours}"
        ))))
    }

    /// Refuses (and counts) a call whose certificate does not name `address`, the
    /// address it speaks for: with TLS on, a node sends Raft messages and snapshots, and
    /// joins or records a store, only for the address its certificate covers, so one
    /// node's certificate cannot impersonate another store.
    fn speaks_for(
        &self,
        identity: Option<&PeerIdentity>,
        address: &str,
    ) -> Result<(), Box<Status>> {
        match identity {
            Some(identity) if !identity.covers(address) => {
                self.parts.refused.fetch_add(1, Ordering::Relaxed);
                crate::metrics::METRICS.refused_calls.inc();
                let names = identity.hosts.join(", ");
                Err(Box::new(Status::permission_denied(format!(
                    "certificate {:?} (for {names}) does not name {address}, the address it \
                     speaks for",
                    identity.name
                ))))
            }
            _ => Ok(()),
        }
    }

    /// Decodes a message sent by `from_store` and checks it is from that store and for
    /// this one.
    fn accept(&self, bytes: &[u8], from_store: u64) -> Option<PeerMessage> {
        match PeerMessage::decode(bytes) {
            Ok(message) if message.from.store_id != from_store => {
                self.parts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    from = message.from.store_id,
                    sender = from_store,
                    "refused a raft message sent for another store"
                );
                None
            }
            Ok(message) if message.to.store_id == self.parts.identity.store_id => Some(message),
            Ok(message) => {
                self.parts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    to = message.to.store_id,
                    "refused a raft message for another store"
                );
                None
            }
            Err(error) => {
                self.parts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "refused a malformed raft message");
                None
            }
        }
    }

    /// With TLS on: an admin client proposes only what `scandium ctl` does (scheduler
    /// settings, store states, grants and the authorisation switch), and a node records
    /// only the store at an address its certificate covers.
    fn may_propose(&self, identity: &PeerIdentity, command: &Command) -> Result<(), Box<Status>> {
        match &command.kind {
            Some(Kind::PutStore(store) | Kind::JoinStore(store)) if identity.node => {
                self.speaks_for(Some(identity), &store.address)
            }
            _ if identity.node => Ok(()),
            Some(
                Kind::SetScheduler(_)
                | Kind::SetStoreState(_)
                | Kind::SetGrant(_)
                | Kind::SetAuthorization(_),
            ) => Ok(()),
            _ => {
                crate::metrics::METRICS.refused_calls.inc();
                Err(Box::new(Status::permission_denied(format!(
                    "client {:?} may change only scheduler settings, store states, grants and \
                     the authorisation switch",
                    identity.name
                ))))
            }
        }
    }

    fn not_leader(&self) -> String {
        self.parts.placement.leader_address().unwrap_or_default()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftDone>, Status> {
        let identity = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.check_cluster(batch.cluster_id).map_err(|e| *e)?;
            self.speaks_for(identity.as_deref(), &batch.from_address).map_err(|e| *e)?;
            if !self.parts.links.allows(batch.from_store) {
                continue;
            }
            self.parts.directory.heard_from(batch.from_store, &batch.from_address);
            for bytes in &batch.messages {
                if let Some(message) = self.accept(bytes, batch.from_store) {
                    if !self.parts.raft.step(message) {
                        self.parts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(Response::new(RaftDone {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotDone>, Status> {
        // A receiver with every slot taken says so at once rather than wait for one:
        // waiting, it would leave this stream's chunks unread, and unread data holds the
        // flow-control window of the HTTP/2 connection it came on, which the sender's
        // other streams share. With more snapshots arriving than slots, the transfers
        // holding the slots starved and stalled to their 60 s timeout, and so did every
        // Raft message on those connections: a node heard nothing for a minute at a time
        // (`scripts/scale-out.sh`, a removal's drain). The sender tries again later.
        let Ok(_permit) = self.snapshots.try_acquire() else {
            return Ok(Response::new(SnapshotDone { error: RECEIVER_BUSY.into() }));
        };
        let identity = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        let mut chunks = request.into_inner();
        let stall = snapshot_stall();
        let deadline = tokio::time::Instant::now() + snapshot_receive_deadline();
        let first = match tokio::time::timeout(stall, chunks.message()).await {
            Ok(first) => first?.ok_or_else(|| Status::invalid_argument("empty snapshot"))?,
            Err(_) => return Err(Status::deadline_exceeded("no snapshot chunk in time")),
        };
        self.check_cluster(first.cluster_id).map_err(|e| *e)?;
        self.speaks_for(identity.as_deref(), &first.from_address).map_err(|e| *e)?;
        if !self.parts.links.allows(first.from_store) {
            return Err(Status::unavailable("link cut"));
        }
        self.parts.directory.heard_from(first.from_store, &first.from_address);
        let message = self
            .accept(&first.message, first.from_store)
            .filter(PeerMessage::is_snapshot)
            .ok_or_else(|| {
                Status::invalid_argument("the first chunk carries no snapshot for this store")
            })?;
        // Each chunk goes to disk as it arrives: a Region of any size is received in the
        // memory of one chunk.
        let mut staging = Some(self.parts.stager.begin());
        let mut announced = None;
        let mut bytes = 0u64;
        loop {
            let now = tokio::time::Instant::now();
            let wait = stall.min(deadline.saturating_duration_since(now));
            let next = tokio::time::timeout(wait, chunks.message()).await;
            let Ok(next) = next else {
                let error = match wait < stall {
                    true => "the snapshot transfer outlasted its deadline".to_string(),
                    false => format!("no snapshot chunk for {stall:?}: the sender stalled"),
                };
                tracing::warn!(%error, from = first.from_store, "refused a snapshot");
                return Ok(Response::new(SnapshotDone { error }));
            };
            let Some(chunk) = next? else { break };
            if chunk.end {
                announced = Some(chunk.records);
                break;
            }
            bytes += chunk.data.len() as u64;
            if bytes > self.parts.max_snapshot_bytes {
                let limit = self.parts.max_snapshot_bytes;
                let error = format!("snapshot exceeds {limit} bytes (max_snapshot_bytes)");
                tracing::warn!(%error, from = first.from_store, "refused a snapshot");
                return Ok(Response::new(SnapshotDone { error }));
            }
            let data = DataChunk::decode(chunk.data.as_slice())
                .map_err(|e| Status::invalid_argument(format!("malformed snapshot chunk: {e}")))?;
            let mut held = staging.take().expect("put back after every chunk");
            let (held, pushed) = tokio::task::spawn_blocking(move || {
                let pushed = held.push(data);
                (held, pushed)
            })
            .await
            .map_err(|e| Status::internal(format!("staging a snapshot chunk: {e}")))?;
            if let Err(error) = pushed {
                tracing::warn!(%error, from = first.from_store, "refused a snapshot");
                return Ok(Response::new(SnapshotDone { error: error.to_string() }));
            }
            staging = Some(held);
        }
        let staged = staging.take().expect("put back after every chunk");
        let data = match finish_staging(staged, announced).await {
            Ok(data) => data,
            Err(error) => {
                tracing::warn!(%error, from = first.from_store, "refused a snapshot");
                return Ok(Response::new(SnapshotDone { error: error.to_string() }));
            }
        };
        let error = match self.parts.raft.step_snapshot(message, data).await {
            Ok(()) => String::new(),
            Err(error) => error,
        };
        Ok(Response::new(SnapshotDone { error }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let identity = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        let req = request.into_inner();
        if req.cluster_id != 0 {
            self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        }
        self.speaks_for(identity.as_deref(), &req.address).map_err(|e| *e)?;
        if req.address.is_empty() {
            return Err(Status::invalid_argument("a joining node must give its address"));
        }
        let store = Store {
            address: req.address.clone(),
            state: StoreState::Up as i32,
            version: req.version,
            start_timestamp: (crate::clock::now_ms() / 1000) as i64,
            ..Default::default()
        };
        let response = match self.parts.placement.propose(Kind::JoinStore(store)).await {
            Ok(PlacementResponse::Ids { first }) => {
                tracing::info!(store_id = first, address = %req.address, "a node joined the cluster");
                JoinResponse {
                    cluster_id: self.parts.identity.cluster_id,
                    store_id: first,
                    error: String::new(),
                }
            }
            Ok(other) => {
                JoinResponse { error: format!("unexpected answer {other:?}"), ..Default::default() }
            }
            Err(e) => JoinResponse { error: e.to_string(), ..Default::default() },
        };
        Ok(Response::new(response))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ClusterParts { identity, placement, control, .. } = &self.parts;
        let stores = placement.read().stores().map(|s| s.encode_to_vec()).collect();
        let liveness = if placement.is_serving() { control.store_liveness() } else { Vec::new() };
        Ok(Response::new(InfoResponse {
            cluster_id: identity.cluster_id,
            store_id: identity.store_id,
            leader_store: placement.leader_store().unwrap_or(0),
            leader_address: placement.leader_address().unwrap_or_default(),
            stores,
            liveness,
        }))
    }

    async fn propose_meta(
        &self,
        request: Request<ProposeMetaRequest>,
    ) -> Result<Response<ProposeMetaResponse>, Status> {
        let identity = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        let req = request.into_inner();
        self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        let Ok(command) = Command::decode(req.command.as_slice()) else {
            return Err(Status::invalid_argument("not a placement command"));
        };
        if let Some(identity) = &identity {
            self.may_propose(identity, &command).map_err(|e| *e)?;
        }
        if !self.parts.placement.is_serving() {
            let leader_address = self.not_leader();
            return Ok(Response::new(ProposeMetaResponse {
                error: NOT_PLACEMENT_LEADER.into(),
                leader_address,
                ..Default::default()
            }));
        }
        let response = match self.parts.placement.propose_local(req.command).await {
            Ok(response) => ProposeMetaResponse {
                response: ResponseRecord::from(&response).encode_to_vec(),
                ..Default::default()
            },
            Err(RequestError::Region(_)) => ProposeMetaResponse {
                error: NOT_PLACEMENT_LEADER.into(),
                leader_address: self.not_leader(),
                ..Default::default()
            },
            Err(e) => ProposeMetaResponse { error: e.to_string(), ..Default::default() },
        };
        Ok(Response::new(response))
    }

    async fn timestamp(
        &self,
        request: Request<TimestampRequest>,
    ) -> Result<Response<TimestampResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        let response = if !self.parts.placement.is_serving() {
            TimestampResponse {
                error: NOT_PLACEMENT_LEADER.into(),
                leader_address: self.not_leader(),
                ..Default::default()
            }
        } else {
            match self.parts.placement.timestamp_local(req.count).await {
                Ok(ts) => TimestampResponse { timestamp: ts.0, ..Default::default() },
                Err(RequestError::Region(_)) => TimestampResponse {
                    error: NOT_PLACEMENT_LEADER.into(),
                    leader_address: self.not_leader(),
                    ..Default::default()
                },
                Err(e) => TimestampResponse { error: e.to_string(), ..Default::default() },
            }
        };
        Ok(Response::new(response))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        if !self.parts.placement.is_serving() {
            return Ok(Response::new(HeartbeatResponse {
                error: NOT_PLACEMENT_LEADER.into(),
                leader_address: self.not_leader(),
                ..Default::default()
            }));
        }
        let response = match self.parts.control.handle(req).await {
            Ok((operators, wants)) => HeartbeatResponse {
                operators,
                send_all: wants.all,
                watch: wants.watch,
                filters: true,
                ..Default::default()
            },
            Err(e) => HeartbeatResponse { error: e.to_string(), ..Default::default() },
        };
        Ok(Response::new(response))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        let error = match transfer_leader(
            &self.parts.registry,
            &self.parts.raft,
            req.region_id,
            req.to_store,
        )
        .await
        {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        Ok(Response::new(TransferLeaderResponse { error }))
    }

    async fn read_txn_keys(
        &self,
        request: Request<ReadTxnKeysRequest>,
    ) -> Result<Response<ReadTxnKeysResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        let response = match self
            .parts
            .storage
            .read_txn_keys(req.region_id, &req.keys, TimeStamp(req.start_ts))
            .await
        {
            Ok(keys) => ReadTxnKeysResponse { keys, ..Default::default() },
            Err(RequestError::Region(_)) => {
                ReadTxnKeysResponse { not_leader: true, ..Default::default() }
            }
            Err(e) => ReadTxnKeysResponse { error: e.to_string(), ..Default::default() },
        };
        Ok(Response::new(response))
    }

    async fn region_digests(
        &self,
        _request: Request<RegionDigestsRequest>,
    ) -> Result<Response<RegionDigestsResponse>, Status> {
        let regions =
            region_digests(&self.parts.raft).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RegionDigestsResponse { regions }))
    }

    async fn region_loads(
        &self,
        request: Request<RegionLoadsRequest>,
    ) -> Result<Response<RegionLoadsResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id).map_err(|e| *e)?;
        if request.region_ids.len() > MAX_LOADS_ASKED {
            let asked = request.region_ids.len();
            let limit = format!("at most {MAX_LOADS_ASKED} Regions' loads a call, not {asked}");
            return Err(Status::invalid_argument(limit));
        }
        let response = match self.parts.control.local_region_loads(&request.region_ids) {
            Some(loads) => RegionLoadsResponse { loads, ..Default::default() },
            None => RegionLoadsResponse {
                error: NOT_PLACEMENT_LEADER.into(),
                leader_address: self.not_leader(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn operators(
        &self,
        request: Request<OperatorsRequest>,
    ) -> Result<Response<OperatorsResponse>, Status> {
        self.check_cluster(request.into_inner().cluster_id).map_err(|e| *e)?;
        let response = match self.parts.control.local_operators() {
            Some(operators) => OperatorsResponse { operators, ..Default::default() },
            None => OperatorsResponse {
                error: NOT_PLACEMENT_LEADER.into(),
                leader_address: self.not_leader(),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}

/// Hands leadership of a Region led here (or of the placement group) to its replica on
/// `to_store`.
pub async fn transfer_leader(
    registry: &Registry,
    raft: &RaftHandle,
    region_id: u64,
    to_store: u64,
) -> Result<(), RequestError> {
    let status = registry
        .get(region_id)
        .or_else(|| (region_id == META_GROUP_ID).then(|| registry.meta().status).flatten());
    let status = status.ok_or(RaftstoreError::RegionNotFound(region_id))?;
    let target = status
        .region
        .peer_on_store(to_store)
        .ok_or_else(|| {
            RequestError::invalid(format!("region {region_id} has no replica on store {to_store}"))
        })?
        .id;
    raft.with_store(move |store| store.transfer_leader(region_id, target)).await??;
    Ok(())
}

/// Digests read every record a node holds: one computation at a time in the process
/// (over `RegionDigests` and `/debug/digests` alike), the others waiting their turn, so
/// that callers repeating them cannot take every core.
pub(crate) static DIGESTS: Semaphore = Semaphore::const_new(1);

/// A digest of every data column family of each Region held here, with the index it was
/// taken at (replicas of a Region at the same index must agree).
pub async fn region_digests(raft: &RaftHandle) -> Result<Vec<RegionDigest>, RequestError> {
    let _turn = DIGESTS.acquire().await.map_err(|e| RequestError::Internal(e.to_string()))?;
    let taken = raft
        .with_store(|store| {
            let snapshot = store.engine_snapshot();
            let regions: Vec<(RegionStatus, u64)> = store
                .group_ids()
                .into_iter()
                .filter(|id| *id != META_GROUP_ID)
                .filter_map(|id| store.status(id).zip(store.applied_index(id)))
                .collect();
            (snapshot, regions)
        })
        .await?;
    let (snapshot, regions) = taken;
    tokio::task::spawn_blocking(move || {
        regions
            .into_iter()
            .map(|(status, applied_index)| {
                let digests = scandium_raftstore::snapshot::digests(&status.region, &*snapshot)?;
                Ok(RegionDigest {
                    region_id: status.region.id,
                    applied_index,
                    is_leader: status.leader.as_ref().is_some_and(|l| l.id == status.peer.id),
                    digests,
                })
            })
            .collect::<Result<Vec<_>, scandium_storage::StorageError>>()
    })
    .await
    .map_err(|e| RequestError::Internal(e.to_string()))?
    .map_err(RequestError::from)
}

/// Finishes a staged snapshot off the async threads (a refused one is deleted).
async fn finish_staging(
    staging: Staging,
    announced: Option<u64>,
) -> Result<scandium_raftstore::SnapshotData, SnapshotError> {
    tokio::task::spawn_blocking(move || staging.finish(announced))
        .await
        .unwrap_or_else(|e| Err(SnapshotError::Storage(e.to_string())))
}
