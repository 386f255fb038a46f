//! `scandium.Cluster`: the node-to-node service (Raft transport, joining, forwarding to
//! the placement leader, heartbeats). Requests naming another cluster are refused and
//! counted, never acted on.

use crate::context::NodeContext;
use crate::error::RequestError;
use prost::Message as _;
use scandium_placement::{Command, Kind, Response as PlacementResponse, ResponseRecord};
use scandium_protocol::scandium::cluster_server::Cluster;
use scandium_protocol::scandium::*;
use scandium_raftstore::snapshot::{SnapshotAssembler, SnapshotChunk as DataChunk};
use scandium_raftstore::PeerMessage;
use scandium_types::{Store, StoreState, TimeStamp};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

/// Snapshots received at once at most (each is held in memory until installed).
const CONCURRENT_SNAPSHOTS: usize = 2;

/// The node-to-node service of one node.
pub struct ClusterService {
    node: Arc<NodeContext>,
    snapshots: Arc<Semaphore>,
}

impl ClusterService {
    /// Serves `node`.
    pub fn new(node: Arc<NodeContext>) -> ClusterService {
        ClusterService { node, snapshots: Arc::new(Semaphore::new(CONCURRENT_SNAPSHOTS)) }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Box<Status>> {
        let ours = self.node.cluster_id();
        if cluster_id == ours {
            return Ok(());
        }
        self.node.refused.fetch_add(1, Ordering::Relaxed);
        Err(Box::new(Status::failed_precondition(format!(
            "request for cluster {cluster_id} reached a node of cluster {ours}"
        ))))
    }

    /// Decodes a message from `from_store` and checks it is for this store.
    fn accept(&self, bytes: &[u8]) -> Option<PeerMessage> {
        match PeerMessage::decode(bytes) {
            Ok(message) if message.to.store_id == self.node.store_id => Some(message),
            Ok(message) => {
                self.node.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    to = message.to.store_id,
                    "refused a raft message for another store"
                );
                None
            }
            Err(error) => {
                self.node.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "refused a malformed raft message");
                None
            }
        }
    }

    fn not_leader(&self) -> String {
        self.node.placement.leader_address().unwrap_or_default()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftDone>, Status> {
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.check_cluster(batch.cluster_id).map_err(|e| *e)?;
            if !self.node.links.allows(batch.from_store) {
                continue;
            }
            self.node.directory.heard_from(batch.from_store, &batch.from_address);
            for bytes in &batch.messages {
                if let Some(message) = self.accept(bytes) {
                    if !self.node.raft.step(message) {
                        self.node.refused.fetch_add(1, Ordering::Relaxed);
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
        let _permit =
            self.snapshots.acquire().await.map_err(|_| Status::unavailable("stopping"))?;
        let mut chunks = request.into_inner();
        let first =
            chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot"))?;
        self.check_cluster(first.cluster_id).map_err(|e| *e)?;
        if !self.node.links.allows(first.from_store) {
            return Err(Status::unavailable("link cut"));
        }
        self.node.directory.heard_from(first.from_store, &first.from_address);
        let message =
            self.accept(&first.message).filter(PeerMessage::is_snapshot).ok_or_else(|| {
                Status::invalid_argument("the first chunk carries no snapshot for this store")
            })?;
        let mut assembler = SnapshotAssembler::new(self.node.config.max_snapshot_bytes as usize);
        let mut announced = None;
        while let Some(chunk) = chunks.message().await? {
            if chunk.end {
                announced = Some(chunk.records);
                break;
            }
            let data = DataChunk::decode(chunk.data.as_slice())
                .map_err(|e| Status::invalid_argument(format!("malformed snapshot chunk: {e}")))?;
            if let Err(error) = assembler.push(data) {
                return Ok(Response::new(SnapshotDone { error: error.to_string() }));
            }
        }
        let data = match assembler.finish_complete(announced) {
            Ok(data) => data,
            Err(error) => {
                tracing::warn!(%error, from = first.from_store, "refused a snapshot");
                return Ok(Response::new(SnapshotDone { error: error.to_string() }));
            }
        };
        let error = match self.node.raft.step_snapshot(message, data).await {
            Ok(()) => String::new(),
            Err(error) => error,
        };
        Ok(Response::new(SnapshotDone { error }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        if req.cluster_id != 0 {
            self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        }
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
        let response = match self.node.placement.propose(Kind::JoinStore(store)).await {
            Ok(PlacementResponse::Ids { first }) => {
                tracing::info!(store_id = first, address = %req.address, "a node joined the cluster");
                JoinResponse {
                    cluster_id: self.node.cluster_id(),
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
        let node = &self.node;
        let stores = node.placement.read().stores().map(|s| s.encode_to_vec()).collect();
        let liveness = if node.placement.is_serving() { node.store_liveness() } else { Vec::new() };
        Ok(Response::new(InfoResponse {
            cluster_id: node.cluster_id(),
            store_id: node.store_id,
            leader_store: node.placement.leader_store().unwrap_or(0),
            leader_address: node.placement.leader_address().unwrap_or_default(),
            stores,
            liveness,
        }))
    }

    async fn propose_meta(
        &self,
        request: Request<ProposeMetaRequest>,
    ) -> Result<Response<ProposeMetaResponse>, Status> {
        let req = request.into_inner();
        self.check_cluster(req.cluster_id).map_err(|e| *e)?;
        if Command::decode(req.command.as_slice()).is_err() {
            return Err(Status::invalid_argument("not a placement command"));
        }
        if !self.node.placement.is_serving() {
            let leader_address = self.not_leader();
            return Ok(Response::new(ProposeMetaResponse {
                error: "not the placement leader".into(),
                leader_address,
                ..Default::default()
            }));
        }
        let response = match self.node.placement.propose_local(req.command).await {
            Ok(response) => ProposeMetaResponse {
                response: ResponseRecord::from(&response).encode_to_vec(),
                ..Default::default()
            },
            Err(RequestError::Region(_)) => ProposeMetaResponse {
                error: "not the placement leader".into(),
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
        let response = if !self.node.placement.is_serving() {
            TimestampResponse {
                error: "not the placement leader".into(),
                leader_address: self.not_leader(),
                ..Default::default()
            }
        } else {
            match self.node.placement.timestamp_local(req.count).await {
                Ok(ts) => TimestampResponse { timestamp: ts.0, ..Default::default() },
                Err(RequestError::Region(_)) => TimestampResponse {
                    error: "not the placement leader".into(),
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
        if !self.node.placement.is_serving() {
            return Ok(Response::new(HeartbeatResponse {
                error: "not the placement leader".into(),
                leader_address: self.not_leader(),
                ..Default::default()
            }));
        }
        let response = match crate::heartbeat::handle(&self.node, req).await {
            Ok(operators) => HeartbeatResponse { operators, ..Default::default() },
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
        let error = match self.node.transfer_leader_here(req.region_id, req.to_store).await {
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
            .node
            .read_txn_keys_here(req.region_id, &req.keys, TimeStamp(req.start_ts))
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
            self.node.region_digests().await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RegionDigestsResponse { regions }))
    }
}

impl NodeContext {
    /// Hands leadership of a Region led here to its replica on `to_store`.
    pub async fn transfer_leader_here(
        &self,
        region_id: u64,
        to_store: u64,
    ) -> Result<(), RequestError> {
        let status = self.registry.get(region_id).or_else(|| {
            (region_id == scandium_raftstore::META_GROUP_ID)
                .then(|| self.registry.meta().status)
                .flatten()
        });
        let status = status.ok_or(scandium_raftstore::RaftstoreError::RegionNotFound(region_id))?;
        let target = status
            .region
            .peer_on_store(to_store)
            .ok_or_else(|| {
                RequestError::invalid(format!(
                    "region {region_id} has no replica on store {to_store}"
                ))
            })?
            .id;
        self.raft.with_store(move |store| store.transfer_leader(region_id, target)).await??;
        Ok(())
    }

    /// Reads, as the Region's leader, the state of `keys` for transaction `start_ts`,
    /// without changing anything.
    pub async fn read_txn_keys_here(
        &self,
        region_id: u64,
        keys: &[Vec<u8>],
        start_ts: TimeStamp,
    ) -> Result<Vec<TxnKeyState>, RequestError> {
        let command = scandium_txn::command::txn::read_txn_keys(&self.txn, keys.to_vec(), start_ts);
        let states = self.run(crate::commands::Target::Region(region_id), command).await?;
        let records = keys.iter().zip(states);
        Ok(records
            .map(|(key, state)| crate::remote::key_state_record(key.clone(), state))
            .collect())
    }
}
