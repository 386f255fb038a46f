//! Remote calls of commands (`scandium_txn::command::RemoteCall`: lock resolution of
//! abandoned transactions, GC deciding a lock's fate) on the wire: where a key's Region is
//! led, and the call sent to that leader as a client would send it (the storage service
//! for writes, `scandium.Cluster/ReadTxnKeys` for read-only looks). The retries, and
//! running the call here when this node leads, are the command driver's
//! (`commands.rs`).

use crate::error::RequestError;
use crate::network::{Clients, Directory};
use crate::placement::Placement;
use crate::txn_error::{Failure, TxnResult};
use scandium_protocol::kvrpcpb::{self, Context};
use scandium_protocol::metapb;
use scandium_protocol::scandium::{ReadTxnKeysRequest, TxnKeyState};
use scandium_raftstore::{RaftstoreError, Registry};
use scandium_txn::actions::cleanup::TxnStatus;
use scandium_txn::command::{KeyState, RemoteCall, RemoteReply, SecondaryFate};
use scandium_txn::mvcc::{Lock, LockType};
use scandium_types::{Peer, Region, StoreId, TimeStamp};
use std::time::Duration;

/// How long one call to another node may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a key's Region is led.
pub enum Route {
    /// Here, ready.
    Local(Region),
    /// On another node.
    Remote(Leader),
}

/// A Region led elsewhere: the Region as placement knows it, its leader, the leader's
/// address.
pub struct Leader {
    region: Region,
    peer: Peer,
    address: String,
}

/// Where the Region of `key` is led: here if a replica here leads it and has caught up,
/// otherwise where placement last heard its leader.
pub fn route(
    key: &[u8],
    store_id: StoreId,
    registry: &Registry,
    placement: &Placement,
    directory: &Directory,
) -> Result<Route, RequestError> {
    if let Some(status) = registry.find_by_key(key).filter(|s| s.ready_for_reads) {
        return Ok(Route::Local(status.region));
    }
    let state = placement.read();
    let region = state.region_by_key(key).cloned().ok_or_else(|| {
        RequestError::Internal(format!("no region holds {}", crate::redact::key(key)))
    })?;
    let peer = state.leader_of(region.id).cloned().ok_or_else(|| {
        RequestError::Internal(format!("region {} has no known leader yet", region.id))
    })?;
    drop(state);
    if peer.store_id == store_id {
        return Err(RequestError::Internal(format!("region {} is not ready here yet", region.id)));
    }
    let address = directory
        .address(peer.store_id)
        .ok_or_else(|| RequestError::Internal(format!("no address for store {}", peer.store_id)))?;
    Ok(Route::Remote(Leader { region, peer, address }))
}

/// `call` sent to a Region's leader on another node, as a client would send it.
pub async fn call_leader(
    clients: &Clients,
    cluster_id: u64,
    call: &RemoteCall,
    leader: &Leader,
) -> TxnResult<RemoteReply> {
    let Leader { region, peer, address } = leader;
    let context = Some(context(region, peer));
    if let RemoteCall::ReadTxnKey { key, start_ts } = call {
        let mut client = clients.cluster(address).map_err(RequestError::Internal)?;
        let request = ReadTxnKeysRequest {
            cluster_id,
            region_id: region.id,
            keys: vec![key.clone()],
            start_ts: start_ts.0,
        };
        let reply = timed(client.read_txn_keys(request)).await?;
        if reply.not_leader {
            let not_leader = RaftstoreError::NotLeader { region_id: region.id, leader: None };
            return Err(not_leader.into());
        }
        if !reply.error.is_empty() {
            return Err(RequestError::Internal(reply.error).into());
        }
        let state = reply.keys.first().map_or(KeyState::None, key_state_of);
        return Ok(RemoteReply::KeyState(state));
    }
    let mut client = clients.tikv(address).map_err(RequestError::Internal)?;
    match call.clone() {
        RemoteCall::CheckSecondary { key, start_ts } => {
            let request = kvrpcpb::CheckSecondaryLocksRequest {
                context,
                keys: vec![key],
                start_version: start_ts.0,
            };
            let reply = timed(client.kv_check_secondary_locks(request)).await?;
            region_or_key_error(reply.region_error, reply.error)?;
            Ok(RemoteReply::Secondary(if reply.commit_ts > 0 {
                SecondaryFate::Committed(TimeStamp(reply.commit_ts))
            } else if let Some(lock) = reply.locks.first() {
                SecondaryFate::Locked(lock.min_commit_ts)
            } else {
                SecondaryFate::RolledBack
            }))
        }
        RemoteCall::ResolveKey { key, start_ts, commit_ts } => {
            let request = kvrpcpb::ResolveLockRequest {
                context,
                start_version: start_ts.0,
                commit_version: commit_ts.0,
                keys: vec![key],
                ..Default::default()
            };
            let reply = timed(client.kv_resolve_lock(request)).await?;
            region_or_key_error(reply.region_error, reply.error)?;
            Ok(RemoteReply::Resolved)
        }
        RemoteCall::CheckTxnStatus(status) => {
            let request = kvrpcpb::CheckTxnStatusRequest {
                context,
                primary_key: status.primary,
                lock_ts: status.lock_ts.0,
                caller_start_ts: status.caller_start_ts.0,
                current_ts: status.current_ts.0,
                rollback_if_not_exist: status.rollback_if_not_exist,
                force_sync_commit: status.force_sync_commit,
                resolving_pessimistic_lock: status.resolving_pessimistic_lock,
                verify_is_primary: status.verify_is_primary,
                ..Default::default()
            };
            let reply = timed(client.kv_check_txn_status(request)).await?;
            region_or_key_error(reply.region_error, reply.error)?;
            Ok(RemoteReply::Status(if reply.commit_version > 0 {
                TxnStatus::Committed(TimeStamp(reply.commit_version))
            } else if let Some(info) = reply.lock_info.filter(|_| reply.lock_ttl > 0) {
                TxnStatus::Locked(Box::new(lock_of(&info)))
            } else {
                TxnStatus::RolledBack
            }))
        }
        RemoteCall::ReadTxnKey { .. } => unreachable!("answered above"),
    }
}

/// A key's state on the wire (`scandium.Cluster/ReadTxnKeys`).
pub fn key_state_record(key: Vec<u8>, state: KeyState) -> TxnKeyState {
    let (state, min_commit_ts, commit_ts) = match state {
        KeyState::None => (0, 0, 0),
        KeyState::Prewritten(min_commit_ts) => (1, min_commit_ts, 0),
        KeyState::PessimisticLocked => (2, 0, 0),
        KeyState::Committed(ts) => (3, 0, ts.0),
        KeyState::RolledBack => (4, 0, 0),
    };
    TxnKeyState { key, state, min_commit_ts, commit_ts }
}

fn key_state_of(state: &TxnKeyState) -> KeyState {
    match state.state {
        1 => KeyState::Prewritten(state.min_commit_ts),
        2 => KeyState::PessimisticLocked,
        3 => KeyState::Committed(TimeStamp(state.commit_ts)),
        4 => KeyState::RolledBack,
        _ => KeyState::None,
    }
}

fn context(region: &Region, leader: &Peer) -> Context {
    Context {
        region_id: region.id,
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver: region.conf_ver,
            version: region.version,
        }),
        peer: Some(crate::convert::peer_to_meta(leader)),
        ..Default::default()
    }
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> TxnResult<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        // Unreachable or slow leader: refresh the route and retry, as a client would.
        Ok(Err(status)) => Err(stale(status.message())),
        Err(_) => Err(stale("timed out")),
    }
}

fn stale(why: &str) -> Failure {
    tracing::debug!(why, "call to a region leader failed");
    Failure::from(RequestError::from(scandium_raftstore::RaftstoreError::StaleCommand))
}

fn region_or_key_error(
    region_error: Option<scandium_protocol::errorpb::Error>,
    error: Option<kvrpcpb::KeyError>,
) -> TxnResult<()> {
    if let Some(e) = region_error {
        return Err(Failure::Region(Box::new(e)));
    }
    if let Some(e) = error {
        return Err(Failure::Key(Box::new(e)));
    }
    Ok(())
}

/// The lock a remote status check reported.
fn lock_of(info: &kvrpcpb::LockInfo) -> Lock {
    let lock_type = match kvrpcpb::Op::try_from(info.lock_type) {
        Ok(kvrpcpb::Op::Put) => LockType::Put,
        Ok(kvrpcpb::Op::Del) => LockType::Delete,
        Ok(kvrpcpb::Op::PessimisticLock) => LockType::Pessimistic,
        _ => LockType::Lock,
    };
    Lock {
        lock_type: lock_type as i32,
        primary: info.primary_lock.clone(),
        start_ts: info.lock_version,
        ttl: info.lock_ttl,
        short_value: None,
        for_update_ts: info.lock_for_update_ts,
        txn_size: info.txn_size,
        min_commit_ts: info.min_commit_ts,
        use_async_commit: info.use_async_commit,
        secondaries: info.secondaries.clone(),
    }
}
