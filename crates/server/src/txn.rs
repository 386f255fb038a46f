//! The transactional API on this node: one command per RPC, each composing Percolator
//! actions (`scandium_txn::actions`) with request checks, latches and Raft.
//!
//! Every command, writes included, first makes sure this node's state is linearizable
//! (the leader's lease, or a ReadIndex round), as TiKV takes every command's snapshot: a
//! write command can answer without proposing (a lock already there, a transaction's
//! status, a swap of nothing), and a paused, deposed leader must not answer from state
//! the new leader has moved past.
//!
//! A write command takes the latches of its keys, reads a snapshot taken after them, runs
//! its actions into one `MvccTxn`, proposes the result as one Raft command (so each
//! request is all-or-nothing) and releases the latches once it is applied, waking lock
//! waiters of every key whose lock it removed. Reads raise `max_ts` and check in-flight
//! async-commit locks before reading the snapshot.

use crate::context::{Checked, KeyMode, NodeContext};
use crate::txn_error::Failure;
use scandium_protocol::kvrpcpb;
use scandium_raftstore::RaftCommand;
use scandium_txn::actions::cleanup::{
    self, CheckTxnStatus, SecondaryStatus, StatusAction, TxnStatus,
};
use scandium_txn::actions::pessimistic::{self, PessimisticLockRequest};
use scandium_txn::actions::prewrite::{self, Mutation, MutationOp, PessimisticAction, TxnProps};
use scandium_txn::actions::{commit, gc, read};
use scandium_txn::mvcc::{Lock, MvccReader, MvccTxn, Newest};
use scandium_txn::TxnError;
use scandium_types::{Region, TimeStamp};
use std::time::{Duration, Instant};

/// Keys handled per proposal by commands that sweep a range (resolve, GC, delete range).
const SWEEP_BATCH: usize = 256;
/// Keys a transactional scan reads per step.
const SCAN_PAGE: usize = 1024;
/// Longest a pessimistic lock request waits in total, below the client's 2 s deadline.
const MAX_LOCK_WAIT: Duration = Duration::from_millis(1500);

/// Result of a transactional command.
pub type TxnResult<T> = Result<T, Failure>;

/// A command's changes, sealed against the snapshot they were computed from (see
/// `MvccTxn::into_batch`), so the snapshot can be released before the Raft round.
struct Sealed {
    /// What to propose; `None` when the command changed nothing.
    batch: Option<scandium_storage::WriteBatch>,
    /// Keys whose locks the command removes.
    released: Vec<Vec<u8>>,
    /// Lock changes for the lock index.
    lock_changes: Vec<(Vec<u8>, Option<u64>)>,
    /// Keys whose newest record changes, with that record, for the newest-record cache.
    newest: Vec<(Vec<u8>, Newest)>,
}

impl Sealed {
    fn new(reader: &MvccReader<'_>, txn: MvccTxn) -> TxnResult<Sealed> {
        let released = txn.released_keys().to_vec();
        let lock_changes = txn.lock_changes().to_vec();
        if txn.is_empty() {
            return Ok(Sealed { batch: None, released, lock_changes, newest: Vec::new() });
        }
        let (batch, newest) = txn.seal(reader)?;
        Ok(Sealed { batch: Some(batch), released, lock_changes, newest })
    }
}

impl NodeContext {
    fn check_keys<'a>(
        &self,
        checked: &Checked,
        keys: impl IntoIterator<Item = &'a Vec<u8>>,
    ) -> TxnResult<()> {
        for key in keys {
            self.check_key(checked, KeyMode::Txn, key)?;
        }
        Ok(())
    }

    /// Runs `action` under the latches of `keys` on a snapshot taken after them, proposes
    /// its changes, and wakes waiters of the locks it removed.
    async fn txn_write<T>(
        &self,
        region: &Region,
        keys: &[Vec<u8>],
        action: impl FnOnce(&MvccReader<'_>, &mut MvccTxn) -> Result<T, Failure>,
    ) -> TxnResult<T> {
        let latches = self.latches.acquire(keys.iter()).await;
        let hint = self.lock_index.hint_for_write(keys, &self.newest);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        let mut txn = MvccTxn::new();
        let output = action(&reader, &mut txn)?;
        let sealed = Sealed::new(&reader, txn)?;
        drop(reader);
        drop(snapshot);
        self.propose_txn(region, sealed, latches).await?;
        Ok(output)
    }

    /// [`NodeContext::txn_write`] for node-internal callers (the GC worker).
    pub(crate) async fn write_txn_keys<T>(
        &self,
        region: &Region,
        keys: &[Vec<u8>],
        action: impl FnOnce(&MvccReader<'_>, &mut MvccTxn) -> Result<T, Failure>,
    ) -> TxnResult<T> {
        self.txn_write(region, keys, action).await
    }

    /// Resolves the locks of transaction `start_ts` on `keys` (commit at `commit_ts`, or
    /// roll back if it is zero).
    pub(crate) async fn resolve_keys_of(
        &self,
        region: &Region,
        keys: &[Vec<u8>],
        start_ts: u64,
        commit_ts: TimeStamp,
    ) -> TxnResult<()> {
        self.resolve_keys(region, keys, &|ts| (ts == start_ts).then_some(commit_ts.0)).await
    }

    /// Proposes a command's sealed changes under the keys' latches (in `held`, with
    /// anything else the command holds until its change is applied) and, once applied,
    /// updates the lock index and the newest-record cache, wakes waiters of the locks it
    /// removed, and releases `held`.
    ///
    /// The lock index learns of new locks before they are proposed: it must never miss a
    /// lock that storage holds (see [`scandium_txn::LockHint`]). The cache forgets the keys
    /// before, and learns their new records after (see [`scandium_txn::NewestCache`]).
    ///
    /// A request whose client goes away cannot cut this short (see
    /// [`RaftHandle::propose_holding`](crate::raft_driver::RaftHandle::propose_holding)):
    /// the latches (and a prewrite's in-memory locks) stay held until the change is
    /// applied, and the indexes learn of it.
    async fn propose_txn(
        &self,
        region: &Region,
        sealed: Sealed,
        held: impl Send + 'static,
    ) -> TxnResult<()> {
        let Some(batch) = sealed.batch else { return Ok(()) };
        self.lock_index.add_proposed(&sealed.lock_changes);
        self.newest.forget(&sealed.newest);
        let command = RaftCommand::write(region, batch);
        let (lock_index, newest) = (self.lock_index.clone(), self.newest.clone());
        let lock_waits = self.lock_waits.clone();
        let applied = move || {
            lock_index.apply(&sealed.lock_changes);
            newest.record(sealed.newest);
            lock_waits.wake(&sealed.released);
        };
        self.raft.propose_holding(region.id, command, held, applied).await?;
        Ok(())
    }

    /// `KvGet`. A key longer than any stored key is simply not found, as in TiKV.
    pub async fn kv_get(&self, req: &kvrpcpb::GetRequest) -> TxnResult<Option<Vec<u8>>> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        if !self.check_read_key(&checked, KeyMode::Txn, &req.key)? {
            return Ok(None);
        }
        let ts = TimeStamp(req.version);
        // In this order: max_ts, then the lock index, then the snapshot (see LockHint).
        self.concurrency.read_key_check(&req.key, ts)?;
        let hint = self.lock_index.hint_for_read([&req.key], &self.newest);
        let snapshot = self.engine.snapshot();
        Ok(read::point_get(&MvccReader::with_hint(&*snapshot, hint), &req.key, ts)?)
    }

    /// `KvBatchGet`: found pairs, and a locked key as a pair carrying its error.
    pub async fn kv_batch_get(
        &self,
        req: &kvrpcpb::BatchGetRequest,
    ) -> TxnResult<Vec<kvrpcpb::KvPair>> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let mut keys = Vec::with_capacity(req.keys.len());
        for key in &req.keys {
            if self.check_read_key(&checked, KeyMode::Txn, key)? {
                keys.push(key.clone());
            }
        }
        let ts = TimeStamp(req.version);
        // In this order: max_ts, then the lock index, then the snapshot (see LockHint).
        let checks: Vec<_> =
            keys.iter().map(|key| self.concurrency.read_key_check(key, ts)).collect();
        let hint = self.lock_index.hint_for_read(&keys, &self.newest);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        let mut pairs = Vec::new();
        for (key, check) in keys.iter().zip(checks) {
            let result = check.and_then(|()| read::point_get(&reader, key, ts));
            match result {
                Ok(Some(value)) => {
                    pairs.push(kvrpcpb::KvPair { key: key.clone(), value, error: None })
                }
                Ok(None) => {}
                Err(e @ TxnError::KeyIsLocked { .. }) => pairs.push(kvrpcpb::KvPair {
                    key: key.clone(),
                    value: Vec::new(),
                    error: Some(crate::txn_error::key_error(&e)),
                }),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pairs)
    }

    /// `KvScan`, with the client's swapped bounds for reverse scans. As in TiKV, any limit
    /// is accepted (`tikv-client` 0.4 does not cap transactional scans, and adds the keys
    /// it deleted in its buffer to the user's limit) and 0 finds nothing; what bounds the
    /// answer is its size: a scan whose answer would not fit in a response is refused
    /// whole (a shorter one would let the client miss keys when it merges Regions).
    pub async fn kv_scan(&self, req: &kvrpcpb::ScanRequest) -> TxnResult<Vec<kvrpcpb::KvPair>> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let (lower, upper) = if req.reverse {
            (&req.end_key, &req.start_key)
        } else {
            (&req.start_key, &req.end_key)
        };
        let (mut start, mut end) = self.clamp_range(&checked, KeyMode::Txn, lower, upper)?;
        let ts = TimeStamp(req.version);
        // In this order: max_ts, then the lock index, then the snapshot (see LockHint).
        self.concurrency.read_range_check(&start, &end, ts)?;
        let hint = self.lock_index.hint_range(&start, &end);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        let mut remaining = req.limit as usize;
        let (mut pairs, mut budget) = (Vec::new(), self.budget());
        // In pages, so that a large limit never holds more than one page beyond the answer.
        while remaining > 0 {
            let page_limit = remaining.min(SCAN_PAGE);
            let page =
                read::scan(&reader, &start, &end, page_limit, ts, req.key_only, req.reverse)?;
            let full = page.len() == page_limit;
            if let Some((last, _)) = page.last() {
                if req.reverse {
                    end = last.clone();
                } else {
                    start = last.clone();
                    start.push(0);
                }
            }
            remaining -= page.len();
            for (key, value) in page {
                let pair = match value {
                    Ok(value) => kvrpcpb::KvPair { key, value, error: None },
                    Err(e) => kvrpcpb::KvPair {
                        value: Vec::new(),
                        error: Some(crate::txn_error::key_error(&e)),
                        key,
                    },
                };
                budget.charge_bytes(pair.key.len() + pair.value.len() + 16)?;
                pairs.push(pair);
            }
            if !full {
                break;
            }
        }
        Ok(pairs)
    }

    /// `KvPrewrite`.
    pub async fn kv_prewrite(
        &self,
        req: kvrpcpb::PrewriteRequest,
    ) -> TxnResult<prewrite::Prewritten> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.disk.check_write(self.store_id)?;
        if req.use_async_commit || req.try_one_pc {
            // A new leader takes a timestamp into max_ts first (see `replica.rs`); hold the
            // prewrite meanwhile: tikv-client 0.4 gives up on MaxTimestampNotSynced.
            self.wait_max_ts_synced(&checked).await?;
        }
        let mutations = mutations(&req.mutations)?;
        self.check_keys(&checked, mutations.iter().map(|m| &m.key))?;
        let actions = pessimistic_actions(&req, mutations.len())?;
        let props = TxnProps {
            start_ts: TimeStamp(req.start_version),
            primary: req.primary_lock.clone(),
            lock_ttl: req.lock_ttl,
            txn_size: req.txn_size,
            for_update_ts: TimeStamp(req.for_update_ts),
            use_async_commit: req.use_async_commit,
            secondaries: req.secondaries.clone(),
            min_commit_ts: TimeStamp(req.min_commit_ts),
        };
        let keys: Vec<Vec<u8>> = mutations.iter().map(|m| m.key.clone()).collect();
        let mutations: Vec<_> = mutations.into_iter().zip(actions).collect();
        let request = prewrite::PrewriteRequest {
            props: &props,
            mutations: &mutations,
            try_one_pc: req.try_one_pc,
            max_commit_ts: req.max_commit_ts,
        };
        let latches = self.latches.acquire(keys.iter()).await;
        if (props.use_async_commit || req.try_one_pc)
            && !self.max_ts_sync.is_synced(checked.region.id, checked.term)
        {
            return Err(scandium_raftstore::RaftstoreError::StaleCommand.into());
        }
        let hint = self.lock_index.hint_for_write(&keys, &self.newest);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        let mut txn = MvccTxn::new();
        let mut result = prewrite::prewrite(&reader, &mut txn, &self.concurrency, request)?;
        if !result.errors.is_empty() {
            return Ok(result);
        }
        let memory_locks = result.memory_locks.take();
        let sealed = Sealed::new(&reader, txn)?;
        drop(reader);
        drop(snapshot);
        // In-memory locks, like latches, are held until the change is applied.
        self.propose_txn(&checked.region, sealed, (latches, memory_locks)).await?;
        Ok(result)
    }

    /// `KvCommit`.
    pub async fn kv_commit(&self, req: kvrpcpb::CommitRequest) -> TxnResult<u64> {
        // Tests fail commits here, before anything reaches Raft, as a node that died
        // between a transaction's prewrite and its commit would.
        fail::fail_point!("kv_commit", |_| Err(
            scandium_raftstore::RaftstoreError::StaleCommand.into()
        ));
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.check_keys(&checked, &req.keys)?;
        let (start_ts, commit_ts) = (TimeStamp(req.start_version), TimeStamp(req.commit_version));
        self.txn_write(&checked.region, &req.keys, |reader, txn| {
            for key in &req.keys {
                commit::commit(reader, txn, key, start_ts, commit_ts)?;
            }
            Ok(commit_ts.0)
        })
        .await
    }

    /// `KvBatchRollback`.
    pub async fn kv_batch_rollback(&self, req: kvrpcpb::BatchRollbackRequest) -> TxnResult<()> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.check_keys(&checked, &req.keys)?;
        let start_ts = TimeStamp(req.start_version);
        self.txn_write(&checked.region, &req.keys, |reader, txn| {
            req.keys
                .iter()
                .try_for_each(|key| cleanup::rollback(reader, txn, key, start_ts))
                .map_err(Failure::from)
        })
        .await
    }

    /// `KvCleanup`: on failure because the transaction committed, its commit timestamp.
    pub async fn kv_cleanup(&self, req: kvrpcpb::CleanupRequest) -> Result<(), (Failure, u64)> {
        let checked =
            self.check_read_context(req.context.as_ref()).await.map_err(|e| (e.into(), 0))?;
        self.check_keys(&checked, [&req.key]).map_err(|e| (e, 0))?;
        let (start_ts, current_ts) = (TimeStamp(req.start_version), TimeStamp(req.current_ts));
        let mut committed_at = 0;
        let keys = [req.key.clone()];
        let result = self
            .txn_write(&checked.region, &keys, |reader, txn| {
                cleanup::cleanup(reader, txn, &req.key, start_ts, current_ts).map_err(|e| {
                    if let TxnError::Committed { commit_ts, .. } = &e {
                        committed_at = commit_ts.0;
                    }
                    Failure::from(e)
                })
            })
            .await;
        result.map_err(|e| (e, committed_at))
    }

    /// `KvCheckTxnStatus`.
    pub async fn kv_check_txn_status(
        &self,
        req: kvrpcpb::CheckTxnStatusRequest,
    ) -> TxnResult<(TxnStatus, StatusAction)> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.check_keys(&checked, [&req.primary_key])?;
        let status = CheckTxnStatus {
            primary: req.primary_key.clone(),
            lock_ts: TimeStamp(req.lock_ts),
            caller_start_ts: TimeStamp(req.caller_start_ts),
            current_ts: TimeStamp(req.current_ts),
            rollback_if_not_exist: req.rollback_if_not_exist,
            force_sync_commit: req.force_sync_commit,
            resolving_pessimistic_lock: req.resolving_pessimistic_lock,
            verify_is_primary: req.verify_is_primary,
        };
        let keys = [req.primary_key.clone()];
        let grace_ms = self.lock_ttl_of(status.lock_ts);
        let outcome = self
            .txn_write(&checked.region, &keys, |reader, txn| {
                match cleanup::check_txn_status(reader, txn, &self.concurrency, &status) {
                    Err(TxnError::TxnNotFound { .. }) if !status.resolving_pessimistic_lock => Ok(
                        primary_not_written_yet(reader, txn, &self.concurrency, &status, grace_ms)?,
                    ),
                    other => Ok(other?),
                }
            })
            .await?;
        // An async-commit transaction's fate is in its secondaries: an abandoned one is
        // decided from them; a live one whose prewrite is complete is committed now.
        if let (TxnStatus::Locked(lock), _) = &outcome {
            if lock.use_async_commit && !status.force_sync_commit {
                if lock.is_expired(status.current_ts) {
                    let commit_ts = self.resolve_async_commit(&req.primary_key, lock).await?;
                    return Ok(match commit_ts {
                        TimeStamp::ZERO => (TxnStatus::RolledBack, StatusAction::TtlExpireRollback),
                        ts => (TxnStatus::Committed(ts), StatusAction::NoAction),
                    });
                }
                if let Some(ts) = self.commit_async_if_complete(&req.primary_key, lock).await? {
                    return Ok((TxnStatus::Committed(ts), StatusAction::NoAction));
                }
            }
        }
        Ok(outcome)
    }

    /// `KvCheckSecondaryLocks`.
    pub async fn kv_check_secondary_locks(
        &self,
        req: kvrpcpb::CheckSecondaryLocksRequest,
    ) -> TxnResult<SecondaryStatus> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.check_keys(&checked, &req.keys)?;
        let start_ts = TimeStamp(req.start_version);
        self.txn_write(&checked.region, &req.keys, |reader, txn| {
            Ok(cleanup::check_secondary_locks(reader, txn, &req.keys, start_ts)?)
        })
        .await
    }

    /// `KvTxnHeartBeat`: the primary lock's TTL now in force.
    pub async fn kv_txn_heart_beat(&self, req: kvrpcpb::TxnHeartBeatRequest) -> TxnResult<u64> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.check_keys(&checked, [&req.primary_lock])?;
        let keys = [req.primary_lock.clone()];
        self.txn_write(&checked.region, &keys, |reader, txn| {
            let start_ts = TimeStamp(req.start_version);
            Ok(pessimistic::txn_heart_beat(
                reader,
                txn,
                &req.primary_lock,
                start_ts,
                req.advise_lock_ttl,
            )?)
        })
        .await
    }

    /// `KVPessimisticRollback`.
    pub async fn kv_pessimistic_rollback(
        &self,
        req: kvrpcpb::PessimisticRollbackRequest,
    ) -> TxnResult<()> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.check_keys(&checked, &req.keys)?;
        let (start_ts, for_update_ts) =
            (TimeStamp(req.start_version), TimeStamp(req.for_update_ts));
        self.txn_write(&checked.region, &req.keys, |reader, txn| {
            for key in &req.keys {
                pessimistic::pessimistic_rollback(reader, txn, key, start_ts, for_update_ts)?;
            }
            Ok(())
        })
        .await
    }

    /// `KvPessimisticLock`: all keys locked or none. With a positive `wait_timeout`, a
    /// request that meets another transaction's lock waits for it (bounded), refusing
    /// waits that would deadlock. Returns each key's value when asked.
    pub async fn kv_pessimistic_lock(
        &self,
        req: kvrpcpb::PessimisticLockRequest,
    ) -> TxnResult<Vec<Option<Vec<u8>>>> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.disk.check_write(self.store_id)?;
        for mutation in &req.mutations {
            if mutation.op != kvrpcpb::Op::PessimisticLock as i32 {
                return Err(crate::error::RequestError::invalid(
                    "pessimistic lock mutations must be PessimisticLock",
                )
                .into());
            }
        }
        let keys: Vec<Vec<u8>> = req.mutations.iter().map(|m| m.key.clone()).collect();
        self.check_keys(&checked, &keys)?;
        let start_ts = TimeStamp(req.start_version);
        self.concurrency.update_max_ts(TimeStamp(req.for_update_ts));
        let deadline = Instant::now()
            + Duration::from_millis(req.wait_timeout.max(0) as u64).min(MAX_LOCK_WAIT);
        loop {
            let latches = self.latches.acquire(keys.iter()).await;
            let hint = self.lock_index.hint_for_write(&keys, &self.newest);
            let snapshot = self.engine.snapshot();
            let reader = MvccReader::with_hint(&*snapshot, hint);
            let mut txn = MvccTxn::new();
            let mut values = Vec::with_capacity(keys.len());
            let mut blocked = None;
            for mutation in &req.mutations {
                let lock = PessimisticLockRequest {
                    key: mutation.key.clone(),
                    primary: req.primary_lock.clone(),
                    start_ts,
                    lock_ttl: req.lock_ttl,
                    for_update_ts: TimeStamp(req.for_update_ts),
                    should_not_exist: mutation.assertion == kvrpcpb::Assertion::NotExist as i32,
                    min_commit_ts: TimeStamp(req.min_commit_ts),
                };
                match pessimistic::acquire_pessimistic_lock(&reader, &mut txn, &lock) {
                    Ok(value) => values.push(value),
                    Err(TxnError::KeyIsLocked { key, lock }) => {
                        blocked = Some((key, lock));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some((key, lock)) = blocked else {
                let sealed = Sealed::new(&reader, txn)?;
                drop(reader);
                drop(snapshot);
                self.propose_txn(&checked.region, sealed, latches).await?;
                return Ok(values);
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(TxnError::KeyIsLocked { key, lock }.into());
            }
            // Register while the latch is held, so the release cannot be missed.
            let wait = self.lock_waits.register(start_ts, lock.ts(), &key).map_err(|deadlock| {
                Failure::from(TxnError::Deadlock {
                    lock_ts: lock.ts(),
                    lock_key: key.clone(),
                    deadlock_key_hash: deadlock.key_hash,
                })
            })?;
            drop(snapshot);
            drop(latches);
            wait.wait(deadline - now).await;
            // Leadership may have moved while waiting: then answer NotLeader.
            self.check_read_context(req.context.as_ref()).await?;
        }
    }

    /// `KvResolveLock`: commits or rolls back the locks of one transaction (or of each in
    /// `txn_infos`), on the given keys or on the whole Region.
    pub async fn kv_resolve_lock(&self, req: kvrpcpb::ResolveLockRequest) -> TxnResult<()> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let mut fates: Vec<(u64, u64)> = req.txn_infos.iter().map(|t| (t.txn, t.status)).collect();
        if fates.is_empty() {
            fates.push((req.start_version, req.commit_version));
        }
        let fate_of =
            |start_ts: u64| fates.iter().find(|(ts, _)| *ts == start_ts).map(|(_, commit)| *commit);
        if !req.keys.is_empty() {
            self.check_keys(&checked, &req.keys)?;
            return self.resolve_keys(&checked.region, &req.keys, &fate_of).await;
        }
        let region = &checked.region;
        let mut start = region.start_key.clone();
        loop {
            let keys = self
                .lock_index
                .keys(&start, &region.end_key, SWEEP_BATCH, |ts| fate_of(ts).is_some());
            let Some(last) = keys.last().cloned() else { return Ok(()) };
            self.resolve_keys(region, &keys, &fate_of).await?;
            if keys.len() < SWEEP_BATCH {
                return Ok(());
            }
            start = last;
            start.push(0);
        }
    }

    async fn resolve_keys(
        &self,
        region: &Region,
        keys: &[Vec<u8>],
        fate_of: &impl Fn(u64) -> Option<u64>,
    ) -> TxnResult<()> {
        let resolved = self
            .txn_write(region, keys, |reader, txn| {
                let mut resolved = 0;
                for key in keys {
                    // Re-read under the latch: the lock may have been resolved meanwhile.
                    let Some(lock) = reader.load_lock(key)? else { continue };
                    if let Some(commit_ts) = fate_of(lock.start_ts) {
                        cleanup::resolve_lock(reader, txn, key, lock, TimeStamp(commit_ts))?;
                        resolved += 1;
                    }
                }
                Ok(resolved)
            })
            .await?;
        crate::metrics::METRICS.resolved_locks.inc_by(resolved);
        Ok(())
    }

    /// `KvScanLock`: locks with `start_ts <= max_version` in the range, in key order; a
    /// zero limit means all of them, as in TiKV (bounded by the response size).
    pub async fn kv_scan_lock(
        &self,
        req: &kvrpcpb::ScanLockRequest,
    ) -> TxnResult<Vec<kvrpcpb::LockInfo>> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        let (start, end) =
            self.clamp_range(&checked, KeyMode::Txn, &req.start_key, &req.end_key)?;
        let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
        let keys = self.lock_index.keys(&start, &end, limit, |ts| ts <= req.max_version);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        let mut locks = Vec::with_capacity(keys.len());
        let mut budget = self.budget();
        for key in keys {
            // The index narrows the search; storage has the lock itself.
            if let Some(lock) = reader.load_lock(&key)?.filter(|l| l.start_ts <= req.max_version) {
                let info = crate::txn_error::lock_info(&key, &lock);
                budget.charge_bytes(prost::Message::encoded_len(&info))?;
                locks.push(info);
            }
        }
        Ok(locks)
    }

    /// `KvGC`: removes versions of the Region's keys invisible at or above `safe_point`.
    pub async fn kv_gc(&self, req: &kvrpcpb::GcRequest) -> TxnResult<usize> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        self.gc_region(&checked.region, TimeStamp(req.safe_point)).await
    }

    /// Garbage-collects one Region's versions (the caller has resolved old locks).
    pub async fn gc_region(&self, region: &Region, safe_point: TimeStamp) -> TxnResult<usize> {
        let mut start = region.start_key.clone();
        let mut deleted = 0;
        loop {
            let snapshot = self.engine.snapshot();
            let keys = MvccReader::new(&*snapshot).keys_with_writes(
                &start,
                &region.end_key,
                false,
                SWEEP_BATCH,
            )?;
            drop(snapshot);
            let Some(last) = keys.last().cloned() else { return Ok(deleted) };
            deleted += self
                .txn_write(region, &keys, |reader, txn| {
                    keys.iter()
                        .try_fold(0, |n, key| Ok(n + gc::gc_key(reader, txn, key, safe_point)?))
                })
                .await?;
            if keys.len() < SWEEP_BATCH {
                return Ok(deleted);
            }
            start = last;
            start.push(0);
        }
    }

    /// `KvDeleteRange`: deletes every transactional record in the range (within the
    /// Region).
    pub async fn kv_delete_range(&self, req: &kvrpcpb::DeleteRangeRequest) -> TxnResult<()> {
        let checked = self.check_read_context(req.context.as_ref()).await?;
        if !req.end_key.is_empty() && req.start_key >= req.end_key {
            return Err(crate::error::RequestError::invalid(
                "delete range needs start key < end key",
            )
            .into());
        }
        let (start, end) =
            self.clamp_range(&checked, KeyMode::Txn, &req.start_key, &req.end_key)?;
        if req.notify_only {
            return Ok(());
        }
        self.destroy_range(&checked.region, &start, &end).await
    }

    /// `UnsafeDestroyRange`: deletes every transactional record in the range on every
    /// Region of this node (the request names no Region). Both keys must be given (TiKV
    /// crashes on an empty one); an inverted range deletes nothing, as in TiKV.
    pub async fn unsafe_destroy_range(&self, start: &[u8], end: &[u8]) -> TxnResult<()> {
        if start.is_empty() || end.is_empty() {
            return Err(crate::error::RequestError::invalid(
                "destroy range needs both a start and an end key",
            )
            .into());
        }
        if start >= end {
            return Ok(());
        }
        // Every store receives the request; each destroys what it leads.
        for status in
            self.registry.overlapping(start, end).into_iter().filter(|s| s.ready_for_reads)
        {
            let (from, to) = crate::context::clamp_to_region(&status.region, start, end);
            self.destroy_range(&status.region, &from, &to).await?;
        }
        Ok(())
    }

    /// Deletes every transactional record of user keys in `[start, end)` of `region`.
    pub async fn destroy_range(&self, region: &Region, start: &[u8], end: &[u8]) -> TxnResult<()> {
        let mut start = start.to_vec();
        loop {
            let snapshot = self.engine.snapshot();
            let reader = MvccReader::new(&*snapshot);
            let mut keys = reader.keys_with_writes(&start, end, false, SWEEP_BATCH)?;
            keys.extend(self.lock_index.keys(&start, end, SWEEP_BATCH, |_| true));
            drop(snapshot);
            keys.sort();
            keys.dedup();
            keys.truncate(SWEEP_BATCH);
            let Some(last) = keys.last().cloned() else { return Ok(()) };
            self.txn_write(region, &keys, |reader, txn| {
                for key in &keys {
                    if reader.load_lock(key)?.is_some() {
                        txn.unlock(key);
                    }
                    for item in reader.writes_at_or_below(key, TimeStamp::MAX) {
                        let (commit_ts, write) = item?;
                        if write.short_value.is_none() {
                            txn.delete_value(key, TimeStamp(write.start_ts));
                        }
                        txn.delete_write(key, commit_ts);
                    }
                }
                Ok(())
            })
            .await?;
            start = last;
            start.push(0);
        }
    }
}

/// How long an async-commit or 1PC prewrite waits for a new leader's `max_ts`.
const MAX_TS_SYNC_WAIT: Duration = Duration::from_millis(1500);

impl NodeContext {
    async fn wait_max_ts_synced(&self, checked: &Checked) -> TxnResult<()> {
        let (region, term) = (checked.region.id, checked.term);
        if self.max_ts_sync.wait(region, term, MAX_TS_SYNC_WAIT).await {
            Ok(())
        } else {
            // StaleCommand: the client backs off and retries (it gives up on
            // MaxTimestampNotSynced).
            Err(scandium_raftstore::RaftstoreError::StaleCommand.into())
        }
    }
}

/// How long a transaction may take between prewriting a secondary and its primary before a
/// reader may roll it back, when none of its locks tells: the longest lock TTL clients use.
const PRIMARY_GRACE_MS: u64 = 20_000;

impl NodeContext {
    /// The TTL of some lock of transaction `start_ts` on this node, if any is held.
    fn lock_ttl_of(&self, start_ts: TimeStamp) -> u64 {
        let keys = self.lock_index.keys(b"", b"", 1, |ts| ts == start_ts.0);
        let snapshot = self.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        keys.first()
            .and_then(|key| reader.load_lock(key).ok().flatten())
            .map_or(PRIMARY_GRACE_MS, |lock| lock.ttl)
    }
}

/// `CheckTxnStatus` found neither lock nor record at the primary: its prewrite may simply
/// not have arrived yet (prewrites of different Regions run in parallel). TiKV answers
/// `TxnNotFound`, which `tikv-client` 0.4 cannot handle (it fails the read); so while the
/// transaction's locks are within their TTL (`grace_ms`) it is reported as running, and
/// after that it is rolled back, which also refuses its primary's late prewrite.
fn primary_not_written_yet(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    cm: &scandium_txn::ConcurrencyManager,
    status: &CheckTxnStatus,
    grace_ms: u64,
) -> Result<(TxnStatus, StatusAction), TxnError> {
    let age_ms = status.current_ts.physical().saturating_sub(status.lock_ts.physical());
    if age_ms <= grace_ms {
        let lock = Lock {
            primary: status.primary.clone(),
            start_ts: status.lock_ts.0,
            ttl: grace_ms.max(1),
            ..Default::default()
        };
        return Ok((TxnStatus::Locked(Box::new(lock)), StatusAction::NoAction));
    }
    let rollback = CheckTxnStatus { rollback_if_not_exist: true, ..status.clone() };
    cleanup::check_txn_status(reader, txn, cm, &rollback)
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
                    return Err(crate::error::RequestError::invalid(message).into());
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
        return Err(crate::error::RequestError::invalid(message).into());
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
            Err(_) => {
                Err(crate::error::RequestError::invalid(format!("unknown pessimistic action {a}"))
                    .into())
            }
        })
        .collect()
}
