//! [`NodeContext`]: what every request handler shares, and the checks every storage request
//! goes through before it touches data.

use crate::config::Config;
use crate::error::{store_not_match, RequestError};
use crate::heartbeat::Coordinator;
use crate::network::{Clients, Directory, Links};
use crate::placement::Placement;
use crate::raft_driver::RaftHandle;
use crate::replica::MaxTsSync;
use crate::transport::Transport;
use scandium_protocol::kvrpcpb;
use scandium_protocol::scandium::{RegionDigest, StoreLiveness};
use scandium_raftstore::{RaftstoreError, RegionStatus, Registry};
use scandium_storage::EngineRef;
use scandium_txn::{ConcurrencyManager, Latches};
use scandium_types::keyspace::{ApiVersion, PREFIX_LEN};
use scandium_types::{Region, StoreId, MAX_KEY_SIZE};
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
    /// Serialises writes to the same keys.
    pub latches: Latches,
    /// The highest read timestamp and in-flight async-commit locks.
    pub concurrency: Arc<ConcurrencyManager>,
    /// Pessimistic lock requests waiting for other transactions' locks.
    pub lock_waits: crate::lock_wait::LockWaits,
    /// Which keys hold transactional locks (kept in memory; see `scandium_txn::LockIndex`).
    pub lock_index: Arc<scandium_txn::LockIndex>,
    /// Recently written keys' newest records (see `scandium_txn::NewestCache`).
    pub newest: Arc<scandium_txn::NewestCache>,
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
    /// The placement leader's view of stores and operators (used while this node leads
    /// the placement group).
    pub coordinator: Coordinator,
    /// Notified to send a heartbeat now (leadership or Region changed here).
    pub heartbeat_now: Notify,
    /// Regions whose `max_ts` is synchronised since they gained leadership here.
    pub max_ts_sync: MaxTsSync,
    /// Every task the node runs, ended when it stops.
    pub tasks: crate::tasks::Tasks,
    /// The free space of the data directory, against its reserve.
    pub disk: Arc<crate::disk::DiskSpace>,
    /// Messages and requests refused: from another cluster, for another store,
    /// malformed, or dropped because the Raft thread was saturated.
    pub refused: AtomicU64,
}

/// The key space a request addresses; API V2 keys must carry its mode byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// Raw requests: V2 keys start with `r`.
    Raw,
    /// Transactional requests: V2 keys start with `x` (or TiDB's `m`/`t`).
    Txn,
}

/// A storage request that passed the Region checks.
pub struct Checked {
    /// The Region as it is now (its epoch equals the request's).
    pub region: Region,
    /// The API version the request was made with.
    pub api_version: ApiVersion,
    /// The local leader's term.
    pub term: u64,
    /// Whether the leader's lease covers reads right now.
    pub lease_valid: bool,
}

impl NodeContext {
    /// Checks a request's context: the Region exists here, the epoch is current, this peer
    /// leads and has caught up, and the API version is known.
    pub fn check_context(
        &self,
        context: Option<&kvrpcpb::Context>,
    ) -> Result<Checked, RequestError> {
        let context = context.ok_or_else(|| RequestError::invalid("request has no context"))?;
        let api_version = ApiVersion::from_wire(context.api_version).ok_or_else(|| {
            RequestError::invalid(format!("unknown API version {}", context.api_version))
        })?;
        if let Some(peer) = &context.peer {
            if peer.store_id != 0 && peer.store_id != self.store_id {
                return Err(store_not_match(peer.store_id, self.store_id));
            }
        }
        let status = self
            .registry
            .get(context.region_id)
            .ok_or(RaftstoreError::RegionNotFound(context.region_id))?;
        let current = status.region.epoch();
        let matches = context
            .region_epoch
            .as_ref()
            .is_some_and(|e| e.version == current.version && e.conf_ver == current.conf_ver);
        if !matches {
            return Err(RaftstoreError::EpochNotMatch { current: vec![status.region] }.into());
        }
        let lease_valid = status.lease_valid(crate::clock::monotonic_ms());
        let RegionStatus { region, leader, ready_for_reads, term, .. } = status;
        if !ready_for_reads {
            return Err(RaftstoreError::NotLeader { region_id: region.id, leader }.into());
        }
        Ok(Checked { region, api_version, term, lease_valid })
    }

    /// [`NodeContext::check_context`] for a read: it must also be linearizable, so unless
    /// the leader's lease covers it, the leader first confirms with a quorum that it still
    /// leads (a ReadIndex round, which renews the lease). A partitioned or paused old
    /// leader thus never answers from stale state.
    pub async fn check_read_context(
        &self,
        context: Option<&kvrpcpb::Context>,
    ) -> Result<Checked, RequestError> {
        let mut checked = self.check_context(context)?;
        if !checked.lease_valid {
            self.raft.read_index(checked.region.id).await?;
            checked.lease_valid = true;
        }
        Ok(checked)
    }

    /// Makes sure reads of `status`'s Region here are linearizable now (lease or ReadIndex).
    pub async fn ensure_read_lease(&self, status: &RegionStatus) -> Result<(), RequestError> {
        if !status.ready_for_reads {
            let leader = status.leader.clone();
            return Err(RaftstoreError::NotLeader { region_id: status.region.id, leader }.into());
        }
        if !status.lease_valid(crate::clock::monotonic_ms()) {
            self.raft.read_index(status.region.id).await?;
        }
        Ok(())
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// What this node, as placement leader, knows of each store's heartbeats.
    pub fn store_liveness(&self) -> Vec<StoreLiveness> {
        let live = self.coordinator.liveness();
        self.placement
            .read()
            .stores()
            .map(|store| {
                let status = scandium_placement::scheduler::store_status(
                    store,
                    &live,
                    self.coordinator.config(),
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

    /// Checks one key of a request: size, API V2 prefix, and that it lies in the Region.
    pub fn check_key(
        &self,
        checked: &Checked,
        mode: KeyMode,
        key: &[u8],
    ) -> Result<(), RequestError> {
        check_key_shape(checked.api_version, mode, key)?;
        if !checked.region.contains(key) {
            return Err(RaftstoreError::KeyNotInRegion {
                key: key.to_vec(),
                region: Box::new(checked.region.clone()),
            }
            .into());
        }
        Ok(())
    }

    /// Checks a key a read looks up: as [`NodeContext::check_key`], except that a key over
    /// the size limit is no error (TiKV limits only what is written): it cannot be stored,
    /// so the answer is `false` and the read finds nothing without asking storage.
    pub fn check_read_key(
        &self,
        checked: &Checked,
        mode: KeyMode,
        key: &[u8],
    ) -> Result<bool, RequestError> {
        if key.len() > MAX_KEY_SIZE {
            check_key_prefix(checked.api_version, mode, key)?;
            if !checked.region.contains(key) {
                let region = checked.region.clone();
                return Err(RaftstoreError::KeyNotInRegion {
                    key: key.to_vec(),
                    region: Box::new(region),
                }
                .into());
            }
            return Ok(false);
        }
        self.check_key(checked, mode, key)?;
        Ok(true)
    }

    /// Checks the starting key of a range request and clamps `[start, end)` (empty `end` =
    /// unbounded) to the Region. An inverted range is no error: as in TiKV, it holds
    /// nothing, and the clamped range is inverted or empty too.
    pub fn clamp_range(
        &self,
        checked: &Checked,
        mode: KeyMode,
        start: &[u8],
        end: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), RequestError> {
        if start.is_empty() && checked.api_version != ApiVersion::V2 {
            // The unbounded start: only the first Region holds it.
            if !checked.region.start_key.is_empty() {
                let region = checked.region.clone();
                return Err(RaftstoreError::KeyNotInRegion {
                    key: Vec::new(),
                    region: Box::new(region),
                }
                .into());
            }
        } else {
            self.check_key(checked, mode, start)?;
        }
        Ok(clamp_to_region(&checked.region, start, end))
    }
}

/// Key size limit and API V2 prefix rules.
pub fn check_key_shape(
    api_version: ApiVersion,
    mode: KeyMode,
    key: &[u8],
) -> Result<(), RequestError> {
    if key.is_empty() {
        return Err(RequestError::invalid("key must not be empty"));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(RequestError::invalid(format!(
            "key is too large: {} bytes, the limit is {MAX_KEY_SIZE}",
            key.len()
        )));
    }
    check_key_prefix(api_version, mode, key)
}

/// API V2 keys must carry the keyspace prefix of their mode.
fn check_key_prefix(
    api_version: ApiVersion,
    mode: KeyMode,
    key: &[u8],
) -> Result<(), RequestError> {
    if api_version == ApiVersion::V2 {
        let prefix_ok = match mode {
            KeyMode::Raw => key.first() == Some(&scandium_types::keyspace::RAW_MODE),
            KeyMode::Txn => key.first().is_some_and(|m| {
                *m == scandium_types::keyspace::TXN_MODE
                    || scandium_types::keyspace::TIDB_MODES.contains(m)
            }),
        };
        if !prefix_ok || key.len() < PREFIX_LEN {
            return Err(RequestError::invalid(format!(
                "API V2 {mode:?} key {key:?} does not carry a keyspace prefix"
            )));
        }
    }
    Ok(())
}

/// `[start, end) ∩ region` (empty `end` = unbounded on either side).
pub fn clamp_to_region(region: &Region, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = start.max(region.start_key.as_slice()).to_vec();
    let end = match (end.is_empty(), region.end_key.is_empty()) {
        (true, _) => region.end_key.clone(),
        (false, true) => end.to_vec(),
        (false, false) => end.min(region.end_key.as_slice()).to_vec(),
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping() {
        let region =
            Region { start_key: b"b".to_vec(), end_key: b"m".to_vec(), ..Default::default() };
        assert_eq!(clamp_to_region(&region, b"a", b""), (b"b".to_vec(), b"m".to_vec()));
        assert_eq!(clamp_to_region(&region, b"c", b"d"), (b"c".to_vec(), b"d".to_vec()));
        let open = Region { start_key: b"b".to_vec(), ..Default::default() };
        assert_eq!(clamp_to_region(&open, b"c", b""), (b"c".to_vec(), b"".to_vec()));
        assert_eq!(clamp_to_region(&open, b"c", b"z"), (b"c".to_vec(), b"z".to_vec()));
    }

    #[test]
    fn v2_raw_keys_need_their_prefix() {
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"r\0\0\0k").is_ok());
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"x\0\0\0k").is_err());
        assert!(check_key_shape(ApiVersion::V2, KeyMode::Raw, b"r\0").is_err());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, b"anything").is_ok());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, b"").is_err());
        assert!(check_key_shape(ApiVersion::V1, KeyMode::Raw, &vec![0; MAX_KEY_SIZE + 1]).is_err());
    }
}
