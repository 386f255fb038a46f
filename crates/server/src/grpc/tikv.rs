//! `tikvpb.Tikv`: the storage service, raw and transactional. Handlers translate between
//! kvproto and the node's commands (`raw.rs`, `txn.rs`); failures go into the response's
//! error fields, never into the gRPC status (except where a response has no error field).

use super::guard::{first_key, Guarded, Refusal};
use crate::authz::{self, Caller, Need};
use crate::commands::Storage;
use crate::convert::region_to_meta;
use crate::error::RequestError;
use crate::metrics::{Outcome, METRICS};
use crate::split::Splitter;
use crate::tasks::Tasks;
use crate::txn_error::{key_error, lock_info, Failure};
use scandium_protocol::kvrpcpb::{self, KvPair};
use scandium_protocol::tikvpb;
use scandium_protocol::tikvpb::tikv_server::Tikv;
use scandium_txn::actions::cleanup::{SecondaryStatus, StatusAction, TxnStatus};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The storage service of one node. Cheap to clone: `BatchCommands` runs each command
/// on its own task with a clone.
#[derive(Clone)]
pub struct TikvService {
    storage: Arc<Storage>,
    splitter: Arc<Splitter>,
    tasks: Tasks,
    /// Batched commands running on this node, over all its streams
    /// ([`super::batch::MAX_IN_FLIGHT_PER_NODE`]).
    batched: Arc<tokio::sync::Semaphore>,
}

impl TikvService {
    /// Serves requests with `storage`, and `SplitRegion` with `splitter`; `BatchCommands`
    /// streams run on `tasks`.
    pub fn new(storage: Arc<Storage>, splitter: Arc<Splitter>, tasks: Tasks) -> TikvService {
        let batched = Arc::new(tokio::sync::Semaphore::new(super::batch::MAX_IN_FLIGHT_PER_NODE));
        TikvService { storage, splitter, tasks, batched }
    }
}

/// Context of requests that name one Region.
trait HasContext {
    fn context(&self) -> Option<&kvrpcpb::Context>;
}

macro_rules! has_context {
    ($($request:ident),* $(,)?) => {$(
        impl HasContext for kvrpcpb::$request {
            fn context(&self) -> Option<&kvrpcpb::Context> {
                self.context.as_ref()
            }
        }
    )*};
}

has_context!(
    RawGetRequest,
    RawBatchGetRequest,
    RawPutRequest,
    RawBatchPutRequest,
    RawDeleteRequest,
    RawBatchDeleteRequest,
    RawScanRequest,
    RawBatchScanRequest,
    RawDeleteRangeRequest,
    RawGetKeyTtlRequest,
    RawCasRequest,
    RawChecksumRequest,
    GetRequest,
    BatchGetRequest,
    ScanRequest,
    PrewriteRequest,
    CommitRequest,
    BatchRollbackRequest,
    CleanupRequest,
    CheckTxnStatusRequest,
    CheckSecondaryLocksRequest,
    TxnHeartBeatRequest,
    PessimisticRollbackRequest,
    PessimisticLockRequest,
    ResolveLockRequest,
    ScanLockRequest,
    GcRequest,
    DeleteRangeRequest,
    UnsafeDestroyRangeRequest,
);

/// Answers a request the caller's grants do not allow, before anything else is done
/// with it (so nothing of it reaches Raft).
macro_rules! guard {
    ($self:ident, $request:ident, $timer:ident, $operation:literal) => {
        if let Some(refused) = $self.refusal(&$request, $operation) {
            $timer.set(Outcome::Error);
            return Ok(Response::new(refused));
        }
    };
}

impl TikvService {
    /// The answer to a request the caller may not make, if it may not. Requests over
    /// plaintext, and from nodes, carry no grants to check.
    fn refusal<Q: Guarded + HasContext, R: Refusal>(
        &self,
        request: &Request<Q>,
        operation: &str,
    ) -> Option<R> {
        let (message, key) = self.refused(request, operation, false)?;
        crate::metrics::METRICS.refused_calls.inc();
        tracing::debug!(%message, "refused a request");
        let mut response = R::default();
        response.refuse(message, key);
        Some(response)
    }

    /// Whether the caller may write what `request` names (lock resolution, which needs
    /// read access only, is then taken as the caller names it; see
    /// `Storage::kv_resolve_lock`).
    fn may_write<Q: Guarded + HasContext>(&self, request: &Request<Q>) -> bool {
        self.refused(request, "", true).is_none()
    }

    /// Why the caller may not make `request` (writing, if `write`), and a key of it;
    /// neither counted nor logged (asking is not refusing).
    fn refused<Q: Guarded + HasContext>(
        &self,
        request: &Request<Q>,
        operation: &str,
        write: bool,
    ) -> Option<(String, Vec<u8>)> {
        let caller = Caller::of(request)?;
        if !caller.authz.checks(&caller.identity) {
            return None;
        }
        let req = request.get_ref();
        let need = match write {
            true => req.need().written(),
            false => req.need(),
        };
        let region;
        let need = match need {
            Need::Region { space, write, from } => {
                region = self.storage.region_range(req.context());
                match &region {
                    Some((start, end)) => {
                        let from = from.max(start.as_slice());
                        Need::range(space, write, from, end)
                    }
                    None => need,
                }
            }
            need => need,
        };
        let message = caller.authz.check(&caller.identity, operation, &need).err()?;
        Some((message, first_key(&need)))
    }
}

fn pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<KvPair> {
    pairs.into_iter().map(|(key, value)| KvPair { key, value, error: None }).collect()
}

/// Builds a response: `fill` sets the success fields; a failure goes to the response's
/// `region_error` / `error` fields, never to the gRPC status.
macro_rules! respond {
    ($timer:ident, $response:ty, $result:expr, |$resp:ident, $value:ident| $fill:expr) => {{
        let mut $resp = <$response>::default();
        match $result {
            Ok($value) => $fill,
            Err(e) => {
                $timer.set(e.outcome());
                RequestError::fill(e, &mut $resp.region_error, &mut $resp.error)
            }
        }
        Ok(Response::new($resp))
    }};
}

/// Like `respond!` for transactional responses, whose `error` is a `KeyError`.
macro_rules! txn_respond {
    ($timer:ident, $response:ty, $result:expr, |$resp:ident, $value:ident| $fill:expr) => {{
        let mut $resp = <$response>::default();
        match $result {
            Ok($value) => $fill,
            Err(Failure::Region(e)) => $resp.region_error = Some($timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                $timer.set(Outcome::KeyError);
                $resp.error = Some(*e)
            }
        }
        Ok(Response::new($resp))
    }};
}

/// A failed scan or batch get's answer. tikv-client 0.4 reads only the pairs' errors of
/// these responses, never the response's own `error`: an error there alone would reach the
/// application as an empty answer. So it goes in both, on one pair (the locked key, or the
/// request's first key).
fn pairs_carrying(
    key: Vec<u8>,
    error: kvrpcpb::KeyError,
) -> (Vec<KvPair>, Option<kvrpcpb::KeyError>) {
    let key = error.locked.as_ref().map_or(key, |lock| lock.key.clone());
    (vec![KvPair { key, value: Vec::new(), error: Some(error.clone()) }], Some(error))
}

fn lock_infos(locks: &[(Vec<u8>, scandium_txn::mvcc::Lock)]) -> Vec<kvrpcpb::LockInfo> {
    locks.iter().map(|(key, lock)| lock_info(key, lock)).collect()
}

#[tonic::async_trait]
impl Tikv for TikvService {
    async fn raw_get(
        &self,
        request: Request<kvrpcpb::RawGetRequest>,
    ) -> Result<Response<kvrpcpb::RawGetResponse>, Status> {
        let timer = METRICS.request("raw_get");
        guard!(self, request, timer, "RawGet");
        let result = self.storage.raw_get(request.get_ref()).await;
        respond!(timer, kvrpcpb::RawGetResponse, result, |resp, value| match value {
            Some(value) => resp.value = value,
            None => resp.not_found = true,
        })
    }

    async fn raw_batch_get(
        &self,
        request: Request<kvrpcpb::RawBatchGetRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchGetResponse>, Status> {
        let timer = METRICS.request("raw_batch_get");
        guard!(self, request, timer, "RawBatchGet");
        let result = self.storage.raw_batch_get(request.get_ref()).await;
        let mut resp = kvrpcpb::RawBatchGetResponse::default();
        match result {
            Ok(found) => resp.pairs = pairs(found),
            Err(RequestError::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            // The response has no error field; a pair carrying an error but no key would
            // crash API V2 clients, which strip a prefix from every key.
            Err(e) => return Err(timer.refused(Status::invalid_argument(e.to_string()))),
        }
        Ok(Response::new(resp))
    }

    async fn raw_put(
        &self,
        request: Request<kvrpcpb::RawPutRequest>,
    ) -> Result<Response<kvrpcpb::RawPutResponse>, Status> {
        let timer = METRICS.request("raw_put");
        guard!(self, request, timer, "RawPut");
        let result = self.storage.raw_put(request.into_inner()).await;
        respond!(timer, kvrpcpb::RawPutResponse, result, |_resp, _unit| ())
    }

    async fn raw_batch_put(
        &self,
        request: Request<kvrpcpb::RawBatchPutRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchPutResponse>, Status> {
        let timer = METRICS.request("raw_batch_put");
        guard!(self, request, timer, "RawBatchPut");
        let result = self.storage.raw_batch_put(request.into_inner()).await;
        respond!(timer, kvrpcpb::RawBatchPutResponse, result, |_resp, _unit| ())
    }

    async fn raw_delete(
        &self,
        request: Request<kvrpcpb::RawDeleteRequest>,
    ) -> Result<Response<kvrpcpb::RawDeleteResponse>, Status> {
        let timer = METRICS.request("raw_delete");
        guard!(self, request, timer, "RawDelete");
        let result = self.storage.raw_delete(request.into_inner()).await;
        respond!(timer, kvrpcpb::RawDeleteResponse, result, |_resp, _unit| ())
    }

    async fn raw_batch_delete(
        &self,
        request: Request<kvrpcpb::RawBatchDeleteRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchDeleteResponse>, Status> {
        let timer = METRICS.request("raw_batch_delete");
        guard!(self, request, timer, "RawBatchDelete");
        let result = self.storage.raw_batch_delete(request.into_inner()).await;
        respond!(timer, kvrpcpb::RawBatchDeleteResponse, result, |_resp, _unit| ())
    }

    async fn raw_scan(
        &self,
        request: Request<kvrpcpb::RawScanRequest>,
    ) -> Result<Response<kvrpcpb::RawScanResponse>, Status> {
        let timer = METRICS.request("raw_scan");
        guard!(self, request, timer, "RawScan");
        let result = self.storage.raw_scan(request.get_ref()).await;
        let mut resp = kvrpcpb::RawScanResponse::default();
        match result {
            Ok(found) => resp.kvs = pairs(found),
            Err(RequestError::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(e) => return Err(timer.refused(Status::invalid_argument(e.to_string()))),
        }
        Ok(Response::new(resp))
    }

    async fn raw_batch_scan(
        &self,
        request: Request<kvrpcpb::RawBatchScanRequest>,
    ) -> Result<Response<kvrpcpb::RawBatchScanResponse>, Status> {
        let timer = METRICS.request("raw_batch_scan");
        guard!(self, request, timer, "RawBatchScan");
        let result = self.storage.raw_batch_scan(request.get_ref()).await;
        let mut resp = kvrpcpb::RawBatchScanResponse::default();
        match result {
            Ok(found) => resp.kvs = pairs(found),
            Err(RequestError::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(e) => return Err(timer.refused(Status::invalid_argument(e.to_string()))),
        }
        Ok(Response::new(resp))
    }

    async fn raw_delete_range(
        &self,
        request: Request<kvrpcpb::RawDeleteRangeRequest>,
    ) -> Result<Response<kvrpcpb::RawDeleteRangeResponse>, Status> {
        let timer = METRICS.request("raw_delete_range");
        guard!(self, request, timer, "RawDeleteRange");
        let result = self.storage.raw_delete_range(request.get_ref()).await;
        respond!(timer, kvrpcpb::RawDeleteRangeResponse, result, |_resp, _unit| ())
    }

    async fn raw_get_key_ttl(
        &self,
        request: Request<kvrpcpb::RawGetKeyTtlRequest>,
    ) -> Result<Response<kvrpcpb::RawGetKeyTtlResponse>, Status> {
        let timer = METRICS.request("raw_get_key_ttl");
        guard!(self, request, timer, "RawGetKeyTtl");
        let result = self.storage.raw_get_key_ttl(request.get_ref()).await;
        respond!(timer, kvrpcpb::RawGetKeyTtlResponse, result, |resp, ttl| match ttl {
            Some(ttl) => resp.ttl = ttl,
            None => resp.not_found = true,
        })
    }

    async fn raw_compare_and_swap(
        &self,
        request: Request<kvrpcpb::RawCasRequest>,
    ) -> Result<Response<kvrpcpb::RawCasResponse>, Status> {
        let timer = METRICS.request("raw_compare_and_swap");
        guard!(self, request, timer, "RawCompareAndSwap");
        let result = self.storage.raw_compare_and_swap(request.into_inner()).await;
        respond!(timer, kvrpcpb::RawCasResponse, result, |resp, outcome| {
            resp.succeed = outcome.succeeded;
            match outcome.previous {
                Some(previous) => resp.previous_value = previous,
                None => resp.previous_not_exist = true,
            }
        })
    }

    async fn raw_checksum(
        &self,
        request: Request<kvrpcpb::RawChecksumRequest>,
    ) -> Result<Response<kvrpcpb::RawChecksumResponse>, Status> {
        let timer = METRICS.request("raw_checksum");
        guard!(self, request, timer, "RawChecksum");
        let result = self.storage.raw_checksum(request.get_ref()).await;
        respond!(timer, kvrpcpb::RawChecksumResponse, result, |resp, sum| {
            resp.checksum = sum.crc64_xor;
            resp.total_kvs = sum.total_kvs;
            resp.total_bytes = sum.total_bytes;
        })
    }

    async fn split_region(
        &self,
        request: Request<kvrpcpb::SplitRegionRequest>,
    ) -> Result<Response<kvrpcpb::SplitRegionResponse>, Status> {
        let timer = METRICS.request("split_region");
        if let Err(denied) = authz::check_status(&Caller::of(&request), "SplitRegion", &Need::Admin)
        {
            return Err(timer.refused(*denied));
        }
        let req = request.into_inner();
        let mut keys = req.split_keys;
        if !req.split_key.is_empty() {
            keys.push(req.split_key);
        }
        let mut resp = kvrpcpb::SplitRegionResponse::default();
        match self.splitter.split_at_keys(keys).await {
            Ok(regions) => resp.regions = regions.iter().map(region_to_meta).collect(),
            Err(RequestError::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(e) => return Err(timer.refused(Status::invalid_argument(e.to_string()))),
        }
        Ok(Response::new(resp))
    }

    async fn kv_get(
        &self,
        request: Request<kvrpcpb::GetRequest>,
    ) -> Result<Response<kvrpcpb::GetResponse>, Status> {
        let timer = METRICS.request("kv_get");
        guard!(self, request, timer, "KvGet");
        let result = self.storage.kv_get(request.get_ref()).await;
        txn_respond!(timer, kvrpcpb::GetResponse, result, |resp, value| match value {
            Some(value) => resp.value = value,
            None => resp.not_found = true,
        })
    }

    async fn kv_batch_get(
        &self,
        request: Request<kvrpcpb::BatchGetRequest>,
    ) -> Result<Response<kvrpcpb::BatchGetResponse>, Status> {
        let timer = METRICS.request("kv_batch_get");
        guard!(self, request, timer, "KvBatchGet");
        let req = request.into_inner();
        let mut resp = kvrpcpb::BatchGetResponse::default();
        match self.storage.kv_batch_get(&req).await {
            Ok(pairs) => resp.pairs = pairs,
            Err(Failure::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                timer.set(Outcome::KeyError);
                let key = req.keys.first().cloned().unwrap_or_default();
                (resp.pairs, resp.error) = pairs_carrying(key, *e);
            }
        }
        Ok(Response::new(resp))
    }

    async fn kv_scan(
        &self,
        request: Request<kvrpcpb::ScanRequest>,
    ) -> Result<Response<kvrpcpb::ScanResponse>, Status> {
        let timer = METRICS.request("kv_scan");
        guard!(self, request, timer, "KvScan");
        let req = request.into_inner();
        let mut resp = kvrpcpb::ScanResponse::default();
        match self.storage.kv_scan(&req).await {
            Ok(pairs) => resp.pairs = pairs,
            Err(Failure::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                timer.set(Outcome::KeyError);
                let key = if req.reverse { &req.end_key } else { &req.start_key };
                (resp.pairs, resp.error) = pairs_carrying(key.clone(), *e);
            }
        }
        Ok(Response::new(resp))
    }

    async fn kv_prewrite(
        &self,
        request: Request<kvrpcpb::PrewriteRequest>,
    ) -> Result<Response<kvrpcpb::PrewriteResponse>, Status> {
        let timer = METRICS.request("kv_prewrite");
        guard!(self, request, timer, "KvPrewrite");
        let mut resp = kvrpcpb::PrewriteResponse::default();
        match self.storage.kv_prewrite(request.into_inner()).await {
            Ok(result) => {
                resp.errors = result.errors.iter().map(key_error).collect();
                if !resp.errors.is_empty() {
                    timer.set(Outcome::KeyError);
                }
                resp.min_commit_ts = result.min_commit_ts;
                resp.one_pc_commit_ts = result.one_pc_commit_ts;
            }
            Err(Failure::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                timer.set(Outcome::KeyError);
                resp.errors = vec![*e]
            }
        }
        Ok(Response::new(resp))
    }

    async fn kv_commit(
        &self,
        request: Request<kvrpcpb::CommitRequest>,
    ) -> Result<Response<kvrpcpb::CommitResponse>, Status> {
        let timer = METRICS.request("kv_commit");
        guard!(self, request, timer, "KvCommit");
        let result = self.storage.kv_commit(request.into_inner()).await;
        txn_respond!(timer, kvrpcpb::CommitResponse, result, |resp, commit_ts| resp
            .commit_version =
            commit_ts)
    }

    async fn kv_batch_rollback(
        &self,
        request: Request<kvrpcpb::BatchRollbackRequest>,
    ) -> Result<Response<kvrpcpb::BatchRollbackResponse>, Status> {
        let timer = METRICS.request("kv_batch_rollback");
        guard!(self, request, timer, "KvBatchRollback");
        let result = self.storage.kv_batch_rollback(request.into_inner()).await;
        txn_respond!(timer, kvrpcpb::BatchRollbackResponse, result, |_resp, _unit| ())
    }

    async fn kv_cleanup(
        &self,
        request: Request<kvrpcpb::CleanupRequest>,
    ) -> Result<Response<kvrpcpb::CleanupResponse>, Status> {
        let timer = METRICS.request("kv_cleanup");
        guard!(self, request, timer, "KvCleanup");
        let mut resp = kvrpcpb::CleanupResponse::default();
        match self.storage.kv_cleanup(request.into_inner()).await {
            Ok(()) => {}
            Err((Failure::Region(e), _)) => resp.region_error = Some(timer.region_error(*e)),
            Err((Failure::Key(e), commit_ts)) => {
                timer.set(Outcome::KeyError);
                resp.error = Some(*e);
                resp.commit_version = commit_ts;
            }
        }
        Ok(Response::new(resp))
    }

    async fn kv_check_txn_status(
        &self,
        request: Request<kvrpcpb::CheckTxnStatusRequest>,
    ) -> Result<Response<kvrpcpb::CheckTxnStatusResponse>, Status> {
        let timer = METRICS.request("kv_check_txn_status");
        guard!(self, request, timer, "KvCheckTxnStatus");
        let as_reader = !self.may_write(&request);
        let result = self.storage.kv_check_txn_status(request.into_inner(), as_reader).await;
        txn_respond!(timer, kvrpcpb::CheckTxnStatusResponse, result, |resp, outcome| {
            let (status, action) = outcome;
            resp.action = match action {
                StatusAction::NoAction => kvrpcpb::Action::NoAction,
                StatusAction::TtlExpireRollback => kvrpcpb::Action::TtlExpireRollback,
                StatusAction::LockNotExistRollback => kvrpcpb::Action::LockNotExistRollback,
                StatusAction::MinCommitTsPushed => kvrpcpb::Action::MinCommitTsPushed,
                StatusAction::TtlExpirePessimisticRollback => {
                    kvrpcpb::Action::TtlExpirePessimisticRollback
                }
                StatusAction::LockNotExistDoNothing => kvrpcpb::Action::LockNotExistDoNothing,
            } as i32;
            // Exactly one of the three encodings the client accepts.
            match status {
                TxnStatus::RolledBack => {}
                TxnStatus::Committed(ts) => resp.commit_version = ts.0,
                TxnStatus::Locked(lock) => {
                    resp.lock_ttl = lock.ttl.max(1);
                    resp.lock_info = Some(lock_info(&lock.primary, &lock));
                }
            }
        })
    }

    async fn kv_check_secondary_locks(
        &self,
        request: Request<kvrpcpb::CheckSecondaryLocksRequest>,
    ) -> Result<Response<kvrpcpb::CheckSecondaryLocksResponse>, Status> {
        let timer = METRICS.request("kv_check_secondary_locks");
        guard!(self, request, timer, "KvCheckSecondaryLocks");
        let result = self.storage.kv_check_secondary_locks(request.into_inner()).await;
        txn_respond!(timer, kvrpcpb::CheckSecondaryLocksResponse, result, |resp, status| {
            match status {
                SecondaryStatus::Locked(locks) => resp.locks = lock_infos(&locks),
                SecondaryStatus::Committed(ts) => resp.commit_ts = ts.0,
                SecondaryStatus::RolledBack => {}
            }
        })
    }

    async fn kv_txn_heart_beat(
        &self,
        request: Request<kvrpcpb::TxnHeartBeatRequest>,
    ) -> Result<Response<kvrpcpb::TxnHeartBeatResponse>, Status> {
        let timer = METRICS.request("kv_txn_heart_beat");
        guard!(self, request, timer, "KvTxnHeartBeat");
        let result = self.storage.kv_txn_heart_beat(request.into_inner()).await;
        txn_respond!(timer, kvrpcpb::TxnHeartBeatResponse, result, |resp, ttl| resp.lock_ttl = ttl)
    }

    async fn kv_pessimistic_rollback(
        &self,
        request: Request<kvrpcpb::PessimisticRollbackRequest>,
    ) -> Result<Response<kvrpcpb::PessimisticRollbackResponse>, Status> {
        let timer = METRICS.request("kv_pessimistic_rollback");
        guard!(self, request, timer, "KvPessimisticRollback");
        let mut resp = kvrpcpb::PessimisticRollbackResponse::default();
        match self.storage.kv_pessimistic_rollback(request.into_inner()).await {
            Ok(()) => {}
            Err(Failure::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                timer.set(Outcome::KeyError);
                resp.errors = vec![*e]
            }
        }
        Ok(Response::new(resp))
    }

    async fn kv_pessimistic_lock(
        &self,
        request: Request<kvrpcpb::PessimisticLockRequest>,
    ) -> Result<Response<kvrpcpb::PessimisticLockResponse>, Status> {
        let timer = METRICS.request("kv_pessimistic_lock");
        guard!(self, request, timer, "KvPessimisticLock");
        let req = request.into_inner();
        let return_values = req.return_values;
        let mut resp = kvrpcpb::PessimisticLockResponse::default();
        match self.storage.kv_pessimistic_lock(req).await {
            // Values only when asked, then exactly one per key, with not_founds alongside.
            Ok(values) if return_values => {
                resp.not_founds = values.iter().map(Option::is_none).collect();
                resp.values = values.into_iter().map(Option::unwrap_or_default).collect();
            }
            Ok(_) => {}
            Err(Failure::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                timer.set(Outcome::KeyError);
                resp.errors = vec![*e]
            }
        }
        Ok(Response::new(resp))
    }

    async fn kv_resolve_lock(
        &self,
        request: Request<kvrpcpb::ResolveLockRequest>,
    ) -> Result<Response<kvrpcpb::ResolveLockResponse>, Status> {
        let timer = METRICS.request("kv_resolve_lock");
        guard!(self, request, timer, "KvResolveLock");
        let as_reader = !self.may_write(&request);
        let result = self.storage.kv_resolve_lock(request.into_inner(), as_reader).await;
        txn_respond!(timer, kvrpcpb::ResolveLockResponse, result, |_resp, _unit| ())
    }

    async fn kv_scan_lock(
        &self,
        request: Request<kvrpcpb::ScanLockRequest>,
    ) -> Result<Response<kvrpcpb::ScanLockResponse>, Status> {
        let timer = METRICS.request("kv_scan_lock");
        guard!(self, request, timer, "KvScanLock");
        let result = self.storage.kv_scan_lock(request.get_ref()).await;
        txn_respond!(timer, kvrpcpb::ScanLockResponse, result, |resp, locks| resp.locks = locks)
    }

    async fn kv_gc(
        &self,
        request: Request<kvrpcpb::GcRequest>,
    ) -> Result<Response<kvrpcpb::GcResponse>, Status> {
        let timer = METRICS.request("kv_gc");
        guard!(self, request, timer, "KvGc");
        let result = self.storage.kv_gc(request.get_ref()).await;
        txn_respond!(timer, kvrpcpb::GcResponse, result, |_resp, _deleted| ())
    }

    async fn kv_delete_range(
        &self,
        request: Request<kvrpcpb::DeleteRangeRequest>,
    ) -> Result<Response<kvrpcpb::DeleteRangeResponse>, Status> {
        let timer = METRICS.request("kv_delete_range");
        guard!(self, request, timer, "KvDeleteRange");
        let mut resp = kvrpcpb::DeleteRangeResponse::default();
        match self.storage.kv_delete_range(request.get_ref()).await {
            Ok(()) => {}
            Err(Failure::Region(e)) => resp.region_error = Some(timer.region_error(*e)),
            Err(Failure::Key(e)) => {
                timer.set(Outcome::KeyError);
                resp.error = format!("{e:?}")
            }
        }
        Ok(Response::new(resp))
    }

    async fn unsafe_destroy_range(
        &self,
        request: Request<kvrpcpb::UnsafeDestroyRangeRequest>,
    ) -> Result<Response<kvrpcpb::UnsafeDestroyRangeResponse>, Status> {
        let timer = METRICS.request("unsafe_destroy_range");
        guard!(self, request, timer, "UnsafeDestroyRange");
        let req = request.into_inner();
        let mut resp = kvrpcpb::UnsafeDestroyRangeResponse::default();
        if let Err(e) = self.storage.unsafe_destroy_range(&req.start_key, &req.end_key).await {
            timer.set(Outcome::Error);
            resp.error = match e {
                Failure::Region(e) => e.message,
                Failure::Key(e) => format!("{e:?}"),
            };
        }
        Ok(Response::new(resp))
    }

    async fn batch_commands(
        &self,
        request: Request<tonic::Streaming<tikvpb::BatchCommandsRequest>>,
    ) -> Result<Response<super::batch::BatchCommandsStream>, Status> {
        let caller = Caller::of(&request);
        let inbound = request.into_inner();
        let stream = super::batch::serve(self.clone(), &self.tasks, &self.batched, caller, inbound);
        Ok(Response::new(stream))
    }
}
