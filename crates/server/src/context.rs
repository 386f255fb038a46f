//! [`NodeContext`]: what every request handler shares, and the Region checks every storage
//! request goes through before it touches data.

use crate::config::Config;
use crate::error::{store_not_match, RequestError};
use crate::network::{Clients, Directory, Links};
use crate::placement::Placement;
use crate::raft_driver::RaftHandle;
use crate::transport::Transport;
use scandium_protocol::kvrpcpb;
use scandium_protocol::scandium::{RegionDigest, StoreLiveness};
use scandium_raftstore::{Led, RegionStatus, Registry};
use scandium_storage::EngineRef;
use scandium_txn::TxnNode;
use scandium_types::keyspace::ApiVersion;
use scandium_types::{RegionEpoch, StoreId};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::Notify;

/// Everything a request handler needs, shared by all of them.
pub struct NodeContext {
    /// The node's settings.
    pub config: Config,
    /// This node's store.
    pub store_id: StoreId,
    /// The address clients reach this node at.
    pub advertise_addr: String,
    /// The node's storage.
    pub engine: EngineRef,
    /// Regions with a peer on this node.
    pub registry: Registry,
    /// Proposals to the Raft thread.
    pub raft: RaftHandle,
    /// The placement group.
    pub placement: Arc<Placement>,
    /// The node's transactional state, which every command reads and keeps (latches,
    /// `max_ts`, the lock index, the newest-record cache, lock waits).
    pub txn: Arc<TxnNode>,
    /// The waits of commands running here, and the wake-ups that end them.
    pub wakers: Arc<crate::commands::Wakers>,
    /// The cluster this node belongs to.
    pub cluster_id: u64,
    /// Where other stores are.
    pub directory: Arc<Directory>,
    /// Channels to other nodes.
    pub clients: Arc<Clients>,
    /// Links to other nodes (tests cut them).
    pub links: Arc<Links>,
    /// Raft messages to other nodes.
    pub transport: Transport,
    /// The placement leader's control plane: store liveness, operators, scheduling (idle
    /// unless this node leads the placement group).
    pub control: crate::heartbeat::Control,
    /// Notified to send a heartbeat now (leadership or Region changed here).
    pub heartbeat_now: Notify,
    /// Every task the node runs, ended when it stops.
    pub tasks: crate::tasks::Tasks,
    /// The free space of the data directory, against its reserve.
    pub disk: Arc<crate::disk::DiskSpace>,
    /// Messages and requests refused: from another cluster, for another store,
    /// malformed, or dropped because the Raft thread was saturated.
    pub refused: AtomicU64,
}

/// A request's context and the API version it speaks: a request without a context, or
/// with a version this node does not know, is refused before anything else.
pub fn request_context(
    context: Option<&kvrpcpb::Context>,
) -> Result<(&kvrpcpb::Context, ApiVersion), RequestError> {
    let context = context.ok_or_else(|| RequestError::invalid("request has no context"))?;
    let api_version = ApiVersion::from_wire(context.api_version).ok_or_else(|| {
        RequestError::invalid(format!("unknown API version {}", context.api_version))
    })?;
    Ok((context, api_version))
}

impl NodeContext {
    /// Checks a request's context: the peer it names is on this store, the Region exists
    /// here, the epoch is current, and this peer leads and has caught up.
    pub fn check_context(&self, context: &kvrpcpb::Context) -> Result<Led, RequestError> {
        if let Some(peer) = &context.peer {
            if peer.store_id != 0 && peer.store_id != self.store_id {
                return Err(store_not_match(peer.store_id, self.store_id));
            }
        }
        // A request without an epoch matches none.
        let epoch = context.region_epoch.as_ref().map_or(
            RegionEpoch { conf_ver: u64::MAX, version: u64::MAX },
            |e| RegionEpoch { conf_ver: e.conf_ver, version: e.version },
        );
        let now = crate::clock::monotonic_ms();
        Ok(self.registry.check_led(context.region_id, Some(epoch), now)?)
    }

    /// Checks that Region `region_id` is led here and caught up (the node's own work on
    /// it: the Region is taken as it is now).
    pub fn check_led(&self, region_id: u64) -> Result<Led, RequestError> {
        Ok(self.registry.check_led(region_id, None, crate::clock::monotonic_ms())?)
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// What this node, as placement leader, knows of each store's heartbeats.
    pub fn store_liveness(&self) -> Vec<StoreLiveness> {
        let control = self.control.lock();
        let live = control.liveness(crate::heartbeat::now());
        self.placement
            .read()
            .stores()
            .map(|store| {
                let status = scandium_placement::scheduler::store_status(
                    store,
                    &live,
                    &control.config().scheduler,
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

    /// A digest of every data column family of each Region held here, with the index it
    /// was taken at (replicas of a Region at the same index must agree).
    pub async fn region_digests(&self) -> Result<Vec<RegionDigest>, RequestError> {
        let taken = self
            .raft
            .with_store(|store| {
                let snapshot = store.engine_snapshot();
                let regions: Vec<(RegionStatus, u64)> = store
                    .group_ids()
                    .into_iter()
                    .filter(|id| *id != scandium_raftstore::META_GROUP_ID)
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
                    let digests =
                        scandium_raftstore::snapshot::digests(&status.region, &*snapshot)?;
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
}
