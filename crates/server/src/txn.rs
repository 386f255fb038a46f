//! The transactional API on this node: each `Kv*` request decoded into its command
//! (`scandium_txn::command::txn`), which [`Storage::run`] carries out, and the answer
//! encoded as kvproto expects it.

use crate::commands::{request_context, RunError, Storage, Target};
use crate::error::RequestError;
use crate::remote::key_state_record;
use crate::txn_error::{key_error, lock_info, Failure, TxnResult};
use scandium_protocol::kvrpcpb;
use scandium_protocol::scandium::TxnKeyState;
use scandium_txn::actions::cleanup::{CheckTxnStatus, SecondaryStatus, StatusAction, TxnStatus};
use scandium_txn::actions::prewrite::{
    Mutation, MutationOp, PessimisticAction, Prewritten, TxnProps,
};
use scandium_txn::command::txn::{self, Pairs, PessimisticLock, Prewrite, Scan, ScanLock};
use scandium_txn::command::{check_key_shape, KeyMode};
use scandium_txn::{CommandError, TxnError};
use scandium_types::TimeStamp;

/// A transactional request's target and API version.
fn txn_target(
    context: Option<&kvrpcpb::Context>,
) -> TxnResult<(Target<'_>, scandium_types::keyspace::ApiVersion)> {
    let (context, api) = request_context(context)?;
    Ok((Target::Request(context), api))
}

/// Pairs as kvproto carries them: a locked key as a pair with its error.
fn kv_pairs(pairs: Pairs) -> Vec<kvrpcpb::KvPair> {
    pairs
        .into_iter()
        .map(|(key, value)| match value {
            Ok(value) => kvrpcpb::KvPair { key, value, error: None },
            Err(e) => kvrpcpb::KvPair { key, value: Vec::new(), error: Some(key_error(&e)) },
        })
        .collect()
}

/// Pairs read, as [`Storage::count_read`] counts them.
fn read_pairs(pairs: &[kvrpcpb::KvPair]) -> impl Iterator<Item = (&[u8], &[u8])> {
    pairs.iter().map(|p| (p.key.as_slice(), p.value.as_slice()))
}

impl Storage {
    /// `KvGet`.
    pub async fn kv_get(&self, req: &kvrpcpb::GetRequest) -> TxnResult<Option<Vec<u8>>> {
        let (target, api) = txn_target(req.context.as_ref())?;
        self.sample_load(req.context.as_ref(), [req.key.as_slice()]);
        let command = txn::get(self.txn(), api, req.key.clone(), TimeStamp(req.version));
        let value = self.run(target, command).await?;
        let pair = value.as_ref().map(|v| (req.key.as_slice(), v.as_slice()));
        self.count_read(req.context.as_ref(), pair);
        Ok(value)
    }

    /// `KvBatchGet`: found pairs, and a locked key as a pair carrying its error.
    pub async fn kv_batch_get(
        &self,
        req: &kvrpcpb::BatchGetRequest,
    ) -> TxnResult<Vec<kvrpcpb::KvPair>> {
        let (target, api) = txn_target(req.context.as_ref())?;
        self.sample_load(req.context.as_ref(), req.keys.iter().map(Vec::as_slice));
        let command = txn::batch_get(self.txn(), api, req.keys.clone(), TimeStamp(req.version));
        let pairs = kv_pairs(self.run(target, command).await?);
        self.count_read(req.context.as_ref(), read_pairs(&pairs));
        Ok(pairs)
    }

    /// `KvScan`, with the client's swapped bounds for reverse scans.
    pub async fn kv_scan(&self, req: &kvrpcpb::ScanRequest) -> TxnResult<Vec<kvrpcpb::KvPair>> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let scan = Scan {
            start: req.start_key.clone(),
            end: req.end_key.clone(),
            limit: req.limit,
            ts: TimeStamp(req.version),
            key_only: req.key_only,
            reverse: req.reverse,
        };
        self.sample_load(req.context.as_ref(), [req.start_key.as_slice()]);
        let pairs = kv_pairs(self.run(target, txn::scan(self.txn(), api, scan)).await?);
        self.count_read(req.context.as_ref(), read_pairs(&pairs));
        Ok(pairs)
    }

    /// `KvPrewrite`.
    pub async fn kv_prewrite(&self, req: kvrpcpb::PrewriteRequest) -> TxnResult<Prewritten> {
        let (target, api) = txn_target(req.context.as_ref())?;
        self.sample_load(req.context.as_ref(), req.mutations.iter().map(|m| m.key.as_slice()));
        let mutations = mutations(&req.mutations)?;
        let stamps = [req.start_version, req.for_update_ts, req.min_commit_ts, req.max_commit_ts];
        check_not_far_ahead(&stamps.map(TimeStamp))?;
        let first = mutations.first().map(|m| m.key.as_slice());
        check_lock_keys(api, first, &req.primary_lock, &req.secondaries)?;
        let actions = pessimistic_actions(&req, mutations.len())?;
        let props = TxnProps {
            start_ts: TimeStamp(req.start_version),
            primary: req.primary_lock,
            lock_ttl: req.lock_ttl,
            txn_size: req.txn_size,
            for_update_ts: TimeStamp(req.for_update_ts),
            use_async_commit: req.use_async_commit,
            secondaries: req.secondaries,
            min_commit_ts: TimeStamp(req.min_commit_ts),
        };
        let prewrite = Prewrite {
            props,
            mutations: mutations.into_iter().zip(actions).collect(),
            try_one_pc: req.try_one_pc,
            max_commit_ts: req.max_commit_ts,
        };
        Ok(self.run(target, txn::prewrite(self.txn(), api, prewrite)).await?)
    }

    /// `KvCommit`.
    pub async fn kv_commit(&self, req: kvrpcpb::CommitRequest) -> TxnResult<u64> {
        // Tests fail commits here, before anything reaches Raft, as a node that died
        // between a transaction's prewrite and its commit would.
        fail::fail_point!("kv_commit", |_| Err(
            scandium_raftstore::RaftstoreError::StaleCommand.into()
        ));
        let (target, api) = txn_target(req.context.as_ref())?;
        let (start_ts, commit_ts) = (TimeStamp(req.start_version), TimeStamp(req.commit_version));
        check_not_far_ahead(&[start_ts, commit_ts])?;
        let command = txn::commit(self.txn(), api, req.keys, start_ts, commit_ts);
        Ok(self.run(target, command).await?)
    }

    /// `KvBatchRollback`.
    pub async fn kv_batch_rollback(&self, req: kvrpcpb::BatchRollbackRequest) -> TxnResult<()> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let command = txn::batch_rollback(self.txn(), api, req.keys, TimeStamp(req.start_version));
        Ok(self.run(target, command).await?)
    }

    /// `KvCleanup`: on failure because the transaction committed, its commit timestamp.
    pub async fn kv_cleanup(&self, req: kvrpcpb::CleanupRequest) -> Result<(), (Failure, u64)> {
        let (target, api) = txn_target(req.context.as_ref()).map_err(|e| (e, 0))?;
        let (start_ts, current_ts) = (TimeStamp(req.start_version), TimeStamp(req.current_ts));
        let command = txn::cleanup(self.txn(), api, req.key, start_ts, current_ts);
        self.run(target, command).await.map_err(|e| {
            let committed_at = match &e {
                RunError::Command(CommandError::Txn(TxnError::Committed { commit_ts, .. })) => {
                    commit_ts.0
                }
                _ => 0,
            };
            (e.into(), committed_at)
        })
    }

    /// `KvCheckTxnStatus`. A caller that may only read (`as_reader`) cannot decide more
    /// than the primary's state and this node's clock do: the lock's expiry is judged at
    /// the node's clock at the latest (a `current_ts` far ahead, as tikv-client's lock
    /// clean-up sends, would roll back live transactions); `force_sync_commit` is ignored
    /// (it would roll back an async-commit transaction that committed); and so is
    /// `rollback_if_not_exist`: a primary with no lock and no record is reported running
    /// while its transaction's locks may live, and rolled back only after
    /// (`txn::check_txn_status`), not at once, which aborted a transaction whose primary's
    /// prewrite was merely on its way.
    pub async fn kv_check_txn_status(
        &self,
        req: kvrpcpb::CheckTxnStatusRequest,
        as_reader: bool,
    ) -> TxnResult<(TxnStatus, StatusAction)> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let (current_ts, force_sync_commit, rollback_if_not_exist) = match as_reader {
            true => {
                (req.current_ts.min(TimeStamp::compose(crate::clock::now_ms(), 0).0), false, false)
            }
            false => (req.current_ts, req.force_sync_commit, req.rollback_if_not_exist),
        };
        let status = CheckTxnStatus {
            primary: req.primary_key,
            lock_ts: TimeStamp(req.lock_ts),
            caller_start_ts: TimeStamp(req.caller_start_ts),
            current_ts: TimeStamp(current_ts),
            rollback_if_not_exist,
            force_sync_commit,
            resolving_pessimistic_lock: req.resolving_pessimistic_lock,
            verify_is_primary: req.verify_is_primary,
        };
        Ok(self.run(target, txn::check_txn_status(self.txn(), api, status)).await?)
    }

    /// `KvCheckSecondaryLocks`.
    pub async fn kv_check_secondary_locks(
        &self,
        req: kvrpcpb::CheckSecondaryLocksRequest,
    ) -> TxnResult<SecondaryStatus> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let start_ts = TimeStamp(req.start_version);
        let command = txn::check_secondary_locks(self.txn(), api, req.keys, start_ts);
        Ok(self.run(target, command).await?)
    }

    /// `KvTxnHeartBeat`: the primary lock's TTL now in force.
    pub async fn kv_txn_heart_beat(&self, req: kvrpcpb::TxnHeartBeatRequest) -> TxnResult<u64> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let start_ts = TimeStamp(req.start_version);
        let command =
            txn::txn_heart_beat(self.txn(), api, req.primary_lock, start_ts, req.advise_lock_ttl);
        Ok(self.run(target, command).await?)
    }

    /// `KVPessimisticRollback`.
    pub async fn kv_pessimistic_rollback(
        &self,
        req: kvrpcpb::PessimisticRollbackRequest,
    ) -> TxnResult<()> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let (start_ts, for_update_ts) =
            (TimeStamp(req.start_version), TimeStamp(req.for_update_ts));
        let command = txn::pessimistic_rollback(self.txn(), api, req.keys, start_ts, for_update_ts);
        Ok(self.run(target, command).await?)
    }

    /// `KvPessimisticLock`: all keys locked or none; each key's value, when asked.
    pub async fn kv_pessimistic_lock(
        &self,
        req: kvrpcpb::PessimisticLockRequest,
    ) -> TxnResult<Vec<Option<Vec<u8>>>> {
        let (target, api) = txn_target(req.context.as_ref())?;
        if req.mutations.iter().any(|m| m.op != kvrpcpb::Op::PessimisticLock as i32) {
            let message = "pessimistic lock mutations must be PessimisticLock";
            return Err(RequestError::invalid(message).into());
        }
        let first = req.mutations.first().map(|m| m.key.as_slice());
        check_lock_keys(api, first, &req.primary_lock, &[])?;
        check_not_far_ahead(&[TimeStamp(req.start_version), TimeStamp(req.for_update_ts)])?;
        let not_exist = kvrpcpb::Assertion::NotExist as i32;
        let request = PessimisticLock {
            keys: req.mutations.into_iter().map(|m| (m.key, m.assertion == not_exist)).collect(),
            primary: req.primary_lock,
            start_ts: TimeStamp(req.start_version),
            lock_ttl: req.lock_ttl,
            for_update_ts: TimeStamp(req.for_update_ts),
            min_commit_ts: TimeStamp(req.min_commit_ts),
            wait_timeout_ms: req.wait_timeout,
        };
        Ok(self.run(target, txn::pessimistic_lock(self.txn(), api, request)).await?)
    }

    /// `KvResolveLock`: commits or rolls back the locks of one transaction (or of each in
    /// `txn_infos`), on the given keys or on the whole Region.
    ///
    /// For a caller that may only read the keys (`as_reader`), each lock is resolved as
    /// the node finds its transaction's fate from the primary, and only where that is
    /// the outcome named (`txn::resolve_lock_as_reader`).
    pub async fn kv_resolve_lock(
        &self,
        req: kvrpcpb::ResolveLockRequest,
        as_reader: bool,
    ) -> TxnResult<()> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let mut fates: Vec<(u64, u64)> = req.txn_infos.iter().map(|t| (t.txn, t.status)).collect();
        if fates.is_empty() {
            fates.push((req.start_version, req.commit_version));
        }
        let command = match as_reader {
            true => txn::resolve_lock_as_reader(self.txn(), api, fates, req.keys),
            false => txn::resolve_lock(self.txn(), api, fates, req.keys),
        };
        Ok(self.run(target, command).await?)
    }

    /// `KvScanLock`: locks with `start_ts <= max_version` in the range, in key order; a
    /// zero limit means all of them, as in TiKV (bounded by the response size).
    pub async fn kv_scan_lock(
        &self,
        req: &kvrpcpb::ScanLockRequest,
    ) -> TxnResult<Vec<kvrpcpb::LockInfo>> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let request = ScanLock {
            start: req.start_key.clone(),
            end: req.end_key.clone(),
            limit: req.limit,
            max_version: req.max_version,
        };
        let locks = self.run(target, txn::scan_lock(self.txn(), api, request)).await?;
        Ok(locks.iter().map(|(key, lock)| lock_info(key, lock)).collect())
    }

    /// `KvGC`: removes versions of the Region's keys invisible at or above `safe_point`.
    pub async fn kv_gc(&self, req: &kvrpcpb::GcRequest) -> TxnResult<usize> {
        let (target, _) = txn_target(req.context.as_ref())?;
        Ok(self.run(target, txn::gc(self.txn(), TimeStamp(req.safe_point))).await?)
    }

    /// `KvDeleteRange`: deletes every transactional record in the range (within the
    /// Region).
    pub async fn kv_delete_range(&self, req: &kvrpcpb::DeleteRangeRequest) -> TxnResult<()> {
        let (target, api) = txn_target(req.context.as_ref())?;
        let (start, end) = (req.start_key.clone(), req.end_key.clone());
        let command = txn::delete_range(self.txn(), api, start, end, req.notify_only);
        Ok(self.run(target, command).await?)
    }

    /// `UnsafeDestroyRange`: deletes every transactional record in the range on every
    /// Region of this node (the request names no Region). Both keys must be given (TiKV
    /// crashes on an empty one); an inverted range deletes nothing, as in TiKV.
    pub async fn unsafe_destroy_range(&self, start: &[u8], end: &[u8]) -> TxnResult<()> {
        if start.is_empty() || end.is_empty() {
            let message = "destroy range needs both a start and an end key";
            return Err(RequestError::invalid(message).into());
        }
        if start >= end {
            return Ok(());
        }
        // Every store receives the request; each destroys what it leads.
        for status in
            self.registry().overlapping(start, end).into_iter().filter(|s| s.ready_for_reads)
        {
            let command = txn::destroy_range(self.txn(), start.to_vec(), end.to_vec());
            self.run(Target::Region(status.region.id), command).await?;
        }
        Ok(())
    }

    /// Reads, as the Region's leader, the state of `keys` for transaction `start_ts`,
    /// without changing anything (`scandium.Cluster/ReadTxnKeys`: another node resolving
    /// a lock asks the leader of the lock's primary).
    pub async fn read_txn_keys(
        &self,
        region_id: u64,
        keys: &[Vec<u8>],
        start_ts: TimeStamp,
    ) -> Result<Vec<TxnKeyState>, RequestError> {
        let command = txn::read_txn_keys(self.txn(), keys.to_vec(), start_ts);
        let states = self.run(Target::Region(region_id), command).await?;
        let records = keys.iter().zip(states);
        Ok(records.map(|(key, state)| key_state_record(key.clone(), state)).collect())
    }
}

/// Refuses timestamps more than [`MAX_TS_DRIFT_MS`] past this node's clock, as reads' are
/// (`ConcurrencyManager::update_max_ts_from_client`): a version written near the end of
/// time would make every later write of its key a conflict, for good.
///
/// [`MAX_TS_DRIFT_MS`]: scandium_txn::concurrency::MAX_TS_DRIFT_MS
fn check_not_far_ahead(stamps: &[TimeStamp]) -> TxnResult<()> {
    let bound = crate::clock::now_ms().saturating_add(scandium_txn::concurrency::MAX_TS_DRIFT_MS);
    match stamps.iter().find(|ts| ts.physical() > bound) {
        Some(ts) => {
            let message = format!("timestamp {} is more than an hour past this node's clock", ts.0);
            Err(RequestError::invalid(message).into())
        }
        None => Ok(()),
    }
}

/// The other keys a lock names, its primary and (an async-commit primary's) secondaries,
/// must be keys of the request's API and, in API V2, of its keys' keyspace: a V2 lock
/// whose primary lacked the prefix made every tikv-client reader that met it panic (the
/// client strips the prefix from it).
fn check_lock_keys(
    api: scandium_types::keyspace::ApiVersion,
    first_key: Option<&[u8]>,
    primary: &[u8],
    secondaries: &[Vec<u8>],
) -> TxnResult<()> {
    let prefix = |key: &[u8]| key.get(..4).map(<[u8]>::to_vec);
    for key in std::iter::once(primary).chain(secondaries.iter().map(Vec::as_slice)) {
        check_key_shape(api, KeyMode::Txn, key)
            .map_err(|e| RequestError::invalid(e.to_string()))?;
        let other_keyspace = first_key.is_some_and(|first| prefix(first) != prefix(key));
        if api == scandium_types::keyspace::ApiVersion::V2 && other_keyspace {
            let message = "a lock's primary and secondaries must be in its keys' keyspace";
            return Err(RequestError::invalid(message).into());
        }
    }
    Ok(())
}

fn mutations(raw: &[kvrpcpb::Mutation]) -> TxnResult<Vec<Mutation>> {
    raw.iter()
        .map(|m| {
            let op = match kvrpcpb::Op::try_from(m.op) {
                Ok(kvrpcpb::Op::Put) => MutationOp::Put,
                Ok(kvrpcpb::Op::Del) => MutationOp::Delete,
                Ok(kvrpcpb::Op::Lock) => MutationOp::Lock,
                Ok(kvrpcpb::Op::Insert) => MutationOp::Insert,
                Ok(kvrpcpb::Op::CheckNotExists) => MutationOp::CheckNotExists,
                _ => {
                    let message = format!("mutation op {} is not allowed in a prewrite", m.op);
                    return Err(RequestError::invalid(message).into());
                }
            };
            Ok(Mutation { op, key: m.key.clone(), value: m.value.clone() })
        })
        .collect()
}

fn pessimistic_actions(
    req: &kvrpcpb::PrewriteRequest,
    count: usize,
) -> TxnResult<Vec<PessimisticAction>> {
    if req.pessimistic_actions.is_empty() {
        return Ok(vec![PessimisticAction::SkipPessimisticCheck; count]);
    }
    // tikv-client 0.4 splits a prewrite's mutations by Region but sends every shard the
    // whole transaction's action list (all DoPessimisticCheck), so a shard can carry more
    // actions than mutations. TiKV pairs them by position and ignores the rest; so do we.
    // Fewer actions than mutations would leave mutations without one: that is refused.
    if req.pessimistic_actions.len() < count {
        let message =
            format!("{} pessimistic actions for {count} mutations", req.pessimistic_actions.len());
        return Err(RequestError::invalid(message).into());
    }
    req.pessimistic_actions[..count]
        .iter()
        .map(|&a| match kvrpcpb::prewrite_request::PessimisticAction::try_from(a) {
            Ok(kvrpcpb::prewrite_request::PessimisticAction::SkipPessimisticCheck) => {
                Ok(PessimisticAction::SkipPessimisticCheck)
            }
            Ok(kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck) => {
                Ok(PessimisticAction::DoPessimisticCheck)
            }
            Ok(kvrpcpb::prewrite_request::PessimisticAction::DoConstraintCheck) => {
                Ok(PessimisticAction::DoConstraintCheck)
            }
            Err(_) => Err(RequestError::invalid(format!("unknown pessimistic action {a}")).into()),
        })
        .collect()
}
