//! Transactional work the node does on its own behalf (lock resolution of abandoned
//! transactions, GC deciding a lock's fate) on keys whose Region this node may not lead:
//! done locally when it leads the Region, otherwise sent to the leader (the storage
//! service for writes, `scandium.Cluster/ReadTxnKeys` for read-only looks), with the
//! retries a client would do on Region errors. Never from the local engine of a
//! follower, whose state may lag the leader's.

use crate::context::NodeContext;
use crate::error::RequestError;
use crate::txn::TxnResult;
use crate::txn_error::Failure;
use scandium_protocol::kvrpcpb::{self, Context};
use scandium_protocol::metapb;
use scandium_protocol::scandium::{ReadTxnKeysRequest, TxnKeyState};
use scandium_txn::actions::cleanup::{self, CheckTxnStatus, SecondaryStatus, TxnStatus};
use scandium_txn::mvcc::{Lock, LockType};
use scandium_types::{Region, TimeStamp};
use std::time::Duration;

/// Attempts per operation (each may wait out an election).
const ATTEMPTS: u32 = 12;
/// How long one call to another node may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a key's Region is led.
enum Route {
    /// Here, ready.
    Local(Region),
    /// Elsewhere: the Region as placement knows it, its leader, the leader's address.
    Remote { region: Region, leader: scandium_types::Peer, address: String },
}

/// What a secondary of an async-commit transaction holds.
pub enum SecondaryFate {
    /// Its prewrite lock, with the lock's `min_commit_ts`.
    Locked(u64),
    /// It was committed at this timestamp.
    Committed(TimeStamp),
    /// It was never prewritten (now rolled back for good) or was rolled back.
    RolledBack,
}

impl NodeContext {
    fn route(&self, key: &[u8]) -> Result<Route, RequestError> {
        if let Some(status) = self.registry.find_by_key(key).filter(|s| s.ready_for_reads) {
            return Ok(Route::Local(status.region));
        }
        let placement = self.placement.read();
        let region = placement.region_by_key(key).cloned().ok_or_else(|| {
            RequestError::Internal(format!("no region holds {}", key.escape_ascii()))
        })?;
        let leader = placement.leader_of(region.id).cloned().ok_or_else(|| {
            RequestError::Internal(format!("region {} has no known leader yet", region.id))
        })?;
        drop(placement);
        if leader.store_id == self.store_id {
            return Err(RequestError::Internal(format!(
                "region {} is not ready here yet",
                region.id
            )));
        }
        let address = self.directory.address(leader.store_id).ok_or_else(|| {
            RequestError::Internal(format!("no address for store {}", leader.store_id))
        })?;
        Ok(Route::Remote { region, leader, address })
    }

    /// Retries `op` on Region errors and routing failures, with backoff.
    async fn with_route<T, F, Fut>(&self, key: &[u8], mut op: F) -> TxnResult<T>
    where
        F: FnMut(Route) -> Fut,
        Fut: std::future::Future<Output = TxnResult<T>>,
    {
        let mut last: Option<Failure> = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis((10u64 << attempt.min(5)).min(300))).await;
            }
            let route = match self.route(key) {
                Ok(route) => route,
                Err(e) => {
                    last = Some(e.into());
                    continue;
                }
            };
            match op(route).await {
                Err(Failure::Region(e)) => last = Some(Failure::Region(e)),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| RequestError::Internal("no route".into()).into()))
    }

    /// `KvCheckSecondaryLocks` of one key, on its Region's leader.
    pub async fn check_secondary_anywhere(
        &self,
        key: &[u8],
        start_ts: TimeStamp,
    ) -> TxnResult<SecondaryFate> {
        self.with_route(key, |route| async move {
            match route {
                Route::Local(region) => {
                    let keys = [key.to_vec()];
                    let status = self
                        .write_txn_keys(&region, &keys, |reader, txn| {
                            Ok(cleanup::check_secondary_locks(reader, txn, &keys, start_ts)?)
                        })
                        .await?;
                    Ok(match status {
                        SecondaryStatus::Locked(locks) => SecondaryFate::Locked(
                            locks.iter().map(|(_, l)| l.min_commit_ts).max().unwrap_or(0),
                        ),
                        SecondaryStatus::Committed(ts) => SecondaryFate::Committed(ts),
                        SecondaryStatus::RolledBack => SecondaryFate::RolledBack,
                    })
                }
                Route::Remote { region, leader, address } => {
                    let mut client = self.clients.tikv(&address).map_err(RequestError::Internal)?;
                    let request = kvrpcpb::CheckSecondaryLocksRequest {
                        context: Some(context(&region, &leader)),
                        keys: vec![key.to_vec()],
                        start_version: start_ts.0,
                    };
                    let reply = timed(client.kv_check_secondary_locks(request)).await?;
                    region_or_key_error(reply.region_error, reply.error)?;
                    Ok(if reply.commit_ts > 0 {
                        SecondaryFate::Committed(TimeStamp(reply.commit_ts))
                    } else if let Some(lock) = reply.locks.first() {
                        SecondaryFate::Locked(lock.min_commit_ts)
                    } else {
                        SecondaryFate::RolledBack
                    })
                }
            }
        })
        .await
    }

    /// Resolves one key's lock of transaction `start_ts` (commit at `commit_ts`, or roll
    /// back if zero), on its Region's leader.
    pub async fn resolve_key_anywhere(
        &self,
        key: &[u8],
        start_ts: TimeStamp,
        commit_ts: TimeStamp,
    ) -> TxnResult<()> {
        self.with_route(key, |route| async move {
            match route {
                Route::Local(region) => {
                    self.resolve_keys_of(&region, &[key.to_vec()], start_ts.0, commit_ts).await
                }
                Route::Remote { region, leader, address } => {
                    let mut client = self.clients.tikv(&address).map_err(RequestError::Internal)?;
                    let request = kvrpcpb::ResolveLockRequest {
                        context: Some(context(&region, &leader)),
                        start_version: start_ts.0,
                        commit_version: commit_ts.0,
                        keys: vec![key.to_vec()],
                        ..Default::default()
                    };
                    let reply = timed(client.kv_resolve_lock(request)).await?;
                    region_or_key_error(reply.region_error, reply.error)
                }
            }
        })
        .await
    }

    /// The state of `key` for transaction `start_ts`, read on its Region's leader
    /// without changing anything.
    pub async fn read_txn_key_anywhere(
        &self,
        key: &[u8],
        start_ts: TimeStamp,
    ) -> TxnResult<TxnKeyState> {
        self.with_route(key, |route| async move {
            let region_id = match &route {
                Route::Local(region) => region.id,
                Route::Remote { region, .. } => region.id,
            };
            let states = match route {
                Route::Local(_) => {
                    self.read_txn_keys_here(region_id, &[key.to_vec()], start_ts).await?
                }
                Route::Remote { address, .. } => {
                    let mut client =
                        self.clients.cluster(&address).map_err(RequestError::Internal)?;
                    let request = ReadTxnKeysRequest {
                        cluster_id: self.cluster_id(),
                        region_id,
                        keys: vec![key.to_vec()],
                        start_ts: start_ts.0,
                    };
                    let reply = timed(client.read_txn_keys(request)).await?;
                    if reply.not_leader {
                        return Err(scandium_raftstore::RaftstoreError::NotLeader {
                            region_id,
                            leader: None,
                        }
                        .into());
                    }
                    if !reply.error.is_empty() {
                        return Err(RequestError::Internal(reply.error).into());
                    }
                    reply.keys
                }
            };
            states
                .into_iter()
                .next()
                .ok_or_else(|| RequestError::Internal("no state returned".into()).into())
        })
        .await
    }

    /// `KvCheckTxnStatus` of a transaction's primary, on its Region's leader.
    pub async fn check_txn_status_anywhere(&self, status: CheckTxnStatus) -> TxnResult<TxnStatus> {
        let primary = status.primary.clone();
        self.with_route(&primary, |route| {
            let status = status.clone();
            async move {
                match route {
                    Route::Local(region) => {
                        let keys = [status.primary.clone()];
                        self.write_txn_keys(&region, &keys, |reader, txn| {
                            Ok(cleanup::check_txn_status(reader, txn, &self.concurrency, &status)?
                                .0)
                        })
                        .await
                    }
                    Route::Remote { region, leader, address } => {
                        let mut client =
                            self.clients.tikv(&address).map_err(RequestError::Internal)?;
                        let request = kvrpcpb::CheckTxnStatusRequest {
                            context: Some(context(&region, &leader)),
                            primary_key: status.primary.clone(),
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
                        Ok(if reply.commit_version > 0 {
                            TxnStatus::Committed(TimeStamp(reply.commit_version))
                        } else if let Some(info) = reply.lock_info.filter(|_| reply.lock_ttl > 0) {
                            TxnStatus::Locked(Box::new(lock_of(&info)))
                        } else {
                            TxnStatus::RolledBack
                        })
                    }
                }
            }
        })
        .await
    }
}

fn context(region: &Region, leader: &scandium_types::Peer) -> Context {
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
