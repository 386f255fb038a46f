//! The transactional API's commands: one per `Kv*` RPC, each composing Percolator actions
//! (`crate::actions`).
//!
//! Every command, writes included, passes a linearizable gate first (the leader's lease,
//! or a ReadIndex round), as TiKV takes every command's snapshot: a write command can
//! answer without proposing (a lock already there, a transaction's status), and a paused,
//! deposed leader must not answer from state the new leader has moved past.
//!
//! A write command takes the latches of its keys, reads a snapshot taken after them (with
//! the lock index's hint and the newest-record cache's records), runs its actions into one
//! `MvccTxn` and proposes the result as one Raft command (so each request is all-or-
//! nothing); the proposal's completion, run where the write is applied, updates the
//! indexes, wakes lock waiters of every key whose lock it removed and releases the latches.
//! Reads raise `max_ts` and check in-flight async-commit locks before their snapshot.

use super::checks::{check_keys, check_read_key, clamp_range, scan_bounds, KeyMode};
use super::resolve::{commit_async_if_complete, resolve_async_commit, resolve_keys};
use super::write_keys;
use super::{
    Command, CommandError, CommandResult, Cx, Gate, Held, KeyState, ResponseBudget, Scope, Sealed,
};
use crate::actions::cleanup::{self, CheckTxnStatus, SecondaryStatus, StatusAction, TxnStatus};
use crate::actions::pessimistic::{self, PessimisticLockRequest};
use crate::actions::prewrite::{self, Mutation, PessimisticAction, Prewritten, TxnProps};
use crate::actions::{commit, gc, read};
use crate::mvcc::{Lock, LockType, MvccReader, MvccTxn, TxnCommitRecord};
use crate::node::TxnNode;
use crate::TxnError;
use scandium_types::keyspace::ApiVersion;
use scandium_types::TimeStamp;
use std::sync::Arc;

/// Keys handled per proposal by commands that sweep a range (resolve, GC, delete range).
const SWEEP_BATCH: usize = 256;
/// Keys a transactional scan reads per step.
const SCAN_PAGE: usize = 1024;
/// Longest a pessimistic lock request waits in total, below the client's 2 s deadline.
const MAX_LOCK_WAIT_MS: u64 = 1500;
/// How long an async-commit or 1PC prewrite waits for a new leader's `max_ts`.
const MAX_TS_SYNC_WAIT_MS: u64 = 1500;
/// How long a transaction may take between prewriting a secondary and its primary before a
/// reader may roll it back, when none of its locks tells: the longest lock TTL clients use.
const PRIMARY_GRACE_MS: u64 = 20_000;
/// Locks the GC worker examines per Region per pass.
const GC_LOCKS_PER_PASS: usize = 1024;

/// Reads and commands that may answer from the node's state.
const READ: Gate = Gate { linearizable: true, needs_space: false };
/// Commands that add data (prewrites, pessimistic locks).
const WRITE: Gate = Gate { linearizable: true, needs_space: true };
/// Node-internal sweeps of a Region led here (GC, destroy range): their proposals commit
/// through a quorum or fail, and they answer nobody from the node's state.
const SWEEP: Gate = Gate { linearizable: false, needs_space: false };

/// A read whose answer lists keys, each with its value or the error that hides it (a lock
/// that may commit below the read).
pub type Pairs = Vec<(Vec<u8>, Result<Vec<u8>, TxnError>)>;

/// `KvGet`. A key longer than any stored key is simply not found, as in TiKV.
pub fn get(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    key: Vec<u8>,
    ts: TimeStamp,
) -> Command<Option<Vec<u8>>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        if !check_read_key(&scope, api, KeyMode::Txn, &key)? {
            return Ok(None);
        }
        let node = &cx.node;
        // In this order: max_ts, then the lock index, then the snapshot (see LockHint).
        node.concurrency.read_key_check(&key, ts)?;
        let hint = node.lock_index.hint_for_read([&key], &node.newest);
        let snapshot = node.engine.snapshot();
        Ok(read::point_get(&MvccReader::with_hint(&*snapshot, hint), &key, ts)?)
    })
}

/// `KvBatchGet`: found pairs, and each locked key with its error.
pub fn batch_get(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    keys: Vec<Vec<u8>>,
    ts: TimeStamp,
) -> Command<Pairs> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let mut readable = Vec::with_capacity(keys.len());
        for key in keys {
            if check_read_key(&scope, api, KeyMode::Txn, &key)? {
                readable.push(key);
            }
        }
        let node = &cx.node;
        // In this order: max_ts, then the lock index, then the snapshot (see LockHint).
        let checks: Vec<_> =
            readable.iter().map(|key| node.concurrency.read_key_check(key, ts)).collect();
        let hint = node.lock_index.hint_for_read(&readable, &node.newest);
        let snapshot = node.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        // Bounded by size as scans are: a key named a million times over a large value
        // asked for a terabyte.
        let mut budget = ResponseBudget::new(node.settings().max_response_bytes);
        let mut pairs = Vec::new();
        for (key, check) in readable.into_iter().zip(checks) {
            match check.and_then(|()| read::point_get(&reader, &key, ts)) {
                Ok(Some(value)) => {
                    budget.charge_pair(&key, &value)?;
                    pairs.push((key, Ok(value)));
                }
                Ok(None) => {}
                Err(TxnError::KeyIsLocked { key: locked, lock }) => {
                    budget.charge(key.len() + prost::Message::encoded_len(&*lock) + 16)?;
                    pairs.push((key, Err(TxnError::KeyIsLocked { key: locked, lock })));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(pairs)
    })
}

/// `KvScan`'s request.
#[derive(Clone, Debug)]
pub struct Scan {
    /// First key (reverse: the exclusive upper bound, as the client sends it).
    pub start: Vec<u8>,
    /// End (reverse: the inclusive lower bound); empty = unbounded.
    pub end: Vec<u8>,
    /// Most pairs to return; 0 finds nothing.
    pub limit: u32,
    /// The read timestamp.
    pub ts: TimeStamp,
    /// Keys only.
    pub key_only: bool,
    /// Descending.
    pub reverse: bool,
}

/// `KvScan`. As in TiKV, any limit is accepted (`tikv-client` 0.4 does not cap
/// transactional scans, and adds the keys it deleted in its buffer to the user's limit) and
/// 0 finds nothing; what bounds the answer is its size: a scan whose answer would not fit
/// in a response is refused whole (a shorter one would let the client miss keys when it
/// merges Regions).
pub fn scan(node: &Arc<TxnNode>, api: ApiVersion, request: Scan) -> Command<Pairs> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let (lower, upper) = scan_bounds(&request.start, &request.end, request.reverse);
        let (start, end) = clamp_range(&scope, api, KeyMode::Txn, lower, upper)?;
        if crate::inverted(&start, &end) {
            return Ok(Vec::new());
        }
        let node = &cx.node;
        // In this order: max_ts, then the lock index, then the snapshot (see LockHint).
        node.concurrency.read_range_check(&start, &end, request.ts)?;
        let hint = node.lock_index.hint_range(&start, &end);
        let snapshot = node.engine.snapshot();
        let reader = MvccReader::with_hint(&*snapshot, hint);
        let budget = ResponseBudget::new(node.settings().max_response_bytes);
        scan_pages(&reader, &request, start, end, budget)
    })
}

/// Reads a scan in pages, so that a large limit never holds more than one page beyond the
/// answer.
fn scan_pages(
    reader: &MvccReader<'_>,
    request: &Scan,
    mut start: Vec<u8>,
    mut end: Vec<u8>,
    mut budget: ResponseBudget,
) -> CommandResult<Pairs> {
    let mut remaining = request.limit as usize;
    let mut pairs = Vec::new();
    while remaining > 0 {
        let page_limit = remaining.min(SCAN_PAGE);
        let (ts, key_only, reverse) = (request.ts, request.key_only, request.reverse);
        let page = read::scan(reader, &start, &end, page_limit, ts, key_only, reverse)?;
        let full = page.len() == page_limit;
        if let Some((last, _)) = page.last() {
            if reverse {
                end = last.clone();
            } else {
                start = last.clone();
                start.push(0);
            }
        }
        remaining -= page.len();
        for (key, value) in page {
            let value_len = value.as_ref().map_or(0, Vec::len);
            budget.charge(key.len() + value_len + 16)?;
            pairs.push((key, value));
        }
        if !full {
            break;
        }
    }
    Ok(pairs)
}

/// `KvPrewrite`'s request.
#[derive(Clone, Debug)]
pub struct Prewrite {
    /// What the keys share.
    pub props: TxnProps,
    /// Each key's mutation and how its pessimistic lock is checked.
    pub mutations: Vec<(Mutation, PessimisticAction)>,
    /// Commit in this one step.
    pub try_one_pc: bool,
    /// Refuse a commit timestamp above this (0: no bound).
    pub max_commit_ts: u64,
}

/// `KvPrewrite`: every key or none; per-key failures come back in the answer's `errors`.
/// An async-commit or 1PC prewrite on a Region whose new leader has not synchronised
/// `max_ts` waits for it (up to 1.5 s, then `NotReady`: tikv-client 0.4 gives up on
/// `MaxTimestampNotSynced`).
pub fn prewrite(node: &Arc<TxnNode>, api: ApiVersion, request: Prewrite) -> Command<Prewritten> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(WRITE).await?;
        let needs_max_ts = request.props.use_async_commit || request.try_one_pc;
        if needs_max_ts {
            wait_max_ts_synced(&cx, &scope).await?;
        }
        check_keys(&scope, api, KeyMode::Txn, request.mutations.iter().map(|(m, _)| &m.key))?;
        let keys: Vec<Vec<u8>> = request.mutations.iter().map(|(m, _)| m.key.clone()).collect();
        let latches = cx.latch(&keys).await?;
        if needs_max_ts && !cx.node.max_ts.is_synced(scope.region.id, scope.term) {
            return Err(CommandError::NotReady);
        }
        let (mut prewritten, sealed) = run_prewrite(&cx.node, &keys, &request)?;
        if !prewritten.errors.is_empty() {
            return Ok(prewritten);
        }
        // In-memory locks, like latches, are held until the change is applied.
        let held = Held { latches: Some(latches), memory_locks: prewritten.memory_locks.take() };
        cx.propose(&scope, sealed, held).await?;
        Ok(prewritten)
    })
}

fn run_prewrite(
    node: &TxnNode,
    keys: &[Vec<u8>],
    request: &Prewrite,
) -> CommandResult<(Prewritten, Sealed)> {
    let hint = node.lock_index.hint_for_write(keys, &node.newest);
    let snapshot = node.engine.snapshot();
    let reader = MvccReader::with_hint(&*snapshot, hint);
    let mut txn = MvccTxn::new();
    let prewrite_request = prewrite::PrewriteRequest {
        props: &request.props,
        mutations: &request.mutations,
        try_one_pc: request.try_one_pc,
        max_commit_ts: request.max_commit_ts,
    };
    let prewritten = prewrite::prewrite(&reader, &mut txn, &node.concurrency, prewrite_request)?;
    if !prewritten.errors.is_empty() {
        let nothing = Sealed::new(&reader, MvccTxn::new())?;
        return Ok((prewritten, nothing));
    }
    let sealed = Sealed::new(&reader, txn)?;
    Ok((prewritten, sealed))
}

/// Waits until the Region's leader here has raised `max_ts` in its current term (see
/// `MaxTsSync`), at most [`MAX_TS_SYNC_WAIT_MS`].
async fn wait_max_ts_synced(cx: &Cx, scope: &Scope) -> CommandResult<()> {
    let deadline = cx.now().monotonic_ms + MAX_TS_SYNC_WAIT_MS;
    let (region, term) = (scope.region.id, scope.term);
    loop {
        if cx.node.max_ts.is_synced(region, term) {
            return Ok(());
        }
        if cx.now().monotonic_ms >= deadline {
            return Err(CommandError::NotReady);
        }
        cx.node.max_ts.wait(region, cx.cid());
        // The mark may have come between the check and the registration.
        if cx.node.max_ts.is_synced(region, term) {
            return Ok(());
        }
        cx.wait(Some(deadline)).await?;
    }
}

/// `KvCommit`: returns the commit timestamp.
pub fn commit(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    keys: Vec<Vec<u8>>,
    start_ts: TimeStamp,
    commit_ts: TimeStamp,
) -> Command<u64> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        write_keys(&cx, &scope, &keys, |reader, txn| {
            for key in &keys {
                commit::commit(reader, txn, key, start_ts, commit_ts)?;
            }
            Ok(commit_ts.0)
        })
        .await
    })
}

/// `KvBatchRollback`.
pub fn batch_rollback(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    keys: Vec<Vec<u8>>,
    start_ts: TimeStamp,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        write_keys(&cx, &scope, &keys, |reader, txn| {
            keys.iter().try_for_each(|key| cleanup::rollback(reader, txn, key, start_ts))?;
            Ok(())
        })
        .await
    })
}

/// `KvCleanup`. A transaction that committed fails with [`TxnError::Committed`], whose
/// commit timestamp the client reads.
pub fn cleanup(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    key: Vec<u8>,
    start_ts: TimeStamp,
    current_ts: TimeStamp,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let keys = [key];
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        write_keys(&cx, &scope, &keys, |reader, txn| {
            Ok(cleanup::cleanup(reader, txn, &keys[0], start_ts, current_ts)?)
        })
        .await
    })
}

/// `KvCheckTxnStatus`. `tikv-client` 0.4's readers only resolve locks whose transaction is
/// reported finished, and fail the read on `TxnNotFound`, so this goes further than TiKV:
/// an expired async-commit primary is decided from its secondaries (and every key
/// resolved), a live one whose secondaries are all prewritten is committed now, and a
/// primary with no lock and no record is reported running while the transaction's locks
/// are within their TTL (see [`primary_not_written_yet`]).
pub fn check_txn_status(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    status: CheckTxnStatus,
) -> Command<(TxnStatus, StatusAction)> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let keys = [status.primary.clone()];
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        let grace_ms = lock_ttl_of(&cx.node, status.lock_ts);
        let concurrency = cx.node.concurrency.clone();
        let outcome =
            write_keys(&cx, &scope, &keys, |reader, txn| {
                match cleanup::check_txn_status(reader, txn, &concurrency, &status) {
                    Err(TxnError::TxnNotFound { .. }) if !status.resolving_pessimistic_lock => {
                        Ok(primary_not_written_yet(reader, txn, &concurrency, &status, grace_ms)?)
                    }
                    other => Ok(other?),
                }
            })
            .await?;
        // An async-commit transaction's fate is in its secondaries: an abandoned one is
        // decided from them; a live one whose prewrite is complete is committed now.
        if let (TxnStatus::Locked(lock), _) = &outcome {
            if lock.use_async_commit && !status.force_sync_commit {
                if lock.is_expired(status.current_ts) {
                    let commit_ts = resolve_async_commit(&cx, &status.primary, lock).await?;
                    return Ok(match commit_ts {
                        TimeStamp::ZERO => (TxnStatus::RolledBack, StatusAction::TtlExpireRollback),
                        ts => (TxnStatus::Committed(ts), StatusAction::NoAction),
                    });
                }
                if let Some(ts) = commit_async_if_complete(&cx, &status.primary, lock).await? {
                    return Ok((TxnStatus::Committed(ts), StatusAction::NoAction));
                }
            }
        }
        Ok(outcome)
    })
}

/// The TTL of some lock of transaction `start_ts` on this node, if any is held.
fn lock_ttl_of(node: &TxnNode, start_ts: TimeStamp) -> u64 {
    let keys = node.lock_index.keys(b"", b"", 1, |ts| ts == start_ts.0);
    let snapshot = node.engine.snapshot();
    let reader = MvccReader::new(&*snapshot);
    keys.first()
        .and_then(|key| reader.load_lock(key).ok().flatten())
        .map_or(PRIMARY_GRACE_MS, |lock| lock.ttl)
}

/// `CheckTxnStatus` found neither lock nor record at the primary: its prewrite may simply
/// not have arrived yet (prewrites of different Regions run in parallel). TiKV answers
/// `TxnNotFound`, which `tikv-client` 0.4 cannot handle (it fails the read); so while the
/// transaction's locks are within their TTL (`grace_ms`) it is reported as running, and
/// after that it is rolled back, which also refuses its primary's late prewrite.
fn primary_not_written_yet(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    cm: &crate::ConcurrencyManager,
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

/// `KvCheckSecondaryLocks`.
pub fn check_secondary_locks(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    keys: Vec<Vec<u8>>,
    start_ts: TimeStamp,
) -> Command<SecondaryStatus> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        // Each key once: the answer holds a copy of each key's lock, and a primary's
        // (with its list of secondaries) named a million times was a copy each.
        let mut seen = std::collections::HashSet::new(); // lookups only
        let keys: Vec<Vec<u8>> = keys.into_iter().filter(|key| seen.insert(key.clone())).collect();
        write_keys(&cx, &scope, &keys, |reader, txn| {
            Ok(cleanup::check_secondary_locks(reader, txn, &keys, start_ts)?)
        })
        .await
    })
}

/// `KvTxnHeartBeat`: the primary lock's TTL now in force.
pub fn txn_heart_beat(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    primary: Vec<u8>,
    start_ts: TimeStamp,
    advise_ttl: u64,
) -> Command<u64> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let keys = [primary];
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        write_keys(&cx, &scope, &keys, |reader, txn| {
            Ok(pessimistic::txn_heart_beat(reader, txn, &keys[0], start_ts, advise_ttl)?)
        })
        .await
    })
}

/// `KVPessimisticRollback`.
pub fn pessimistic_rollback(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    keys: Vec<Vec<u8>>,
    start_ts: TimeStamp,
    for_update_ts: TimeStamp,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        write_keys(&cx, &scope, &keys, |reader, txn| {
            for key in &keys {
                pessimistic::pessimistic_rollback(reader, txn, key, start_ts, for_update_ts)?;
            }
            Ok(())
        })
        .await
    })
}

/// `KvPessimisticLock`'s request.
#[derive(Clone, Debug, Default)]
pub struct PessimisticLock {
    /// Each key, and whether it must not exist (an insert).
    pub keys: Vec<(Vec<u8>, bool)>,
    /// The transaction's primary key.
    pub primary: Vec<u8>,
    /// The transaction.
    pub start_ts: TimeStamp,
    /// The locks' time to live, in milliseconds.
    pub lock_ttl: u64,
    /// The timestamp the locks are taken at.
    pub for_update_ts: TimeStamp,
    /// The locks' `min_commit_ts`.
    pub min_commit_ts: TimeStamp,
    /// How long to wait for another transaction's lock, in milliseconds (0 or less: not).
    pub wait_timeout_ms: i64,
}

/// `KvPessimisticLock`: all keys locked or none, each key's latest value returned. With a
/// positive wait timeout, a request that meets another transaction's lock waits for it
/// (at most 1.5 s, inside the client's 2 s deadline), registering the wait while it holds
/// the latch so the release cannot be missed; a wait that would close a cycle of waiting
/// transactions is refused with a `Deadlock` error.
pub fn pessimistic_lock(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    request: PessimisticLock,
) -> Command<Vec<Option<Vec<u8>>>> {
    Command::new(node, move |cx| async move {
        let mut scope = cx.gate(WRITE).await?;
        let keys: Vec<Vec<u8>> = request.keys.iter().map(|(key, _)| key.clone()).collect();
        check_keys(&scope, api, KeyMode::Txn, &keys)?;
        let start_ts = request.start_ts;
        cx.node.concurrency.update_max_ts_from_client(request.for_update_ts)?;
        let wait_ms = u64::try_from(request.wait_timeout_ms).unwrap_or(0).min(MAX_LOCK_WAIT_MS);
        let deadline = cx.now().monotonic_ms + wait_ms;
        loop {
            let latches = cx.latch(&keys).await?;
            let (key, lock) = match try_lock(&cx.node, &keys, &request)? {
                Locking::Done(values, sealed) => {
                    let held = Held { latches: Some(latches), memory_locks: None };
                    cx.propose(&scope, sealed, held).await?;
                    return Ok(values);
                }
                Locking::Blocked(key, lock) => (key, lock),
            };
            if cx.now().monotonic_ms >= deadline {
                return Err(TxnError::KeyIsLocked { key, lock }.into());
            }
            // Registered while the latch is held, so the release cannot be missed.
            let lock_ts = lock.ts();
            let wait = cx.node.lock_waits.register(cx.cid(), start_ts, lock_ts, &key).map_err(
                |deadlock| TxnError::Deadlock {
                    lock_ts,
                    lock_key: key.clone(),
                    deadlock_key_hash: deadlock.key_hash,
                },
            )?;
            drop(latches);
            cx.wait(Some(deadline)).await?;
            drop(wait);
            // Leadership may have moved while waiting: then the gate answers NotLeader.
            scope = cx.gate(READ).await?;
        }
    })
}

enum Locking {
    Done(Vec<Option<Vec<u8>>>, Sealed),
    Blocked(Vec<u8>, Box<Lock>),
}

fn try_lock(node: &TxnNode, keys: &[Vec<u8>], request: &PessimisticLock) -> CommandResult<Locking> {
    let hint = node.lock_index.hint_for_write(keys, &node.newest);
    let snapshot = node.engine.snapshot();
    let reader = MvccReader::with_hint(&*snapshot, hint);
    let mut txn = MvccTxn::new();
    let mut values = Vec::with_capacity(keys.len());
    for (key, should_not_exist) in &request.keys {
        let lock = PessimisticLockRequest {
            key: key.clone(),
            primary: request.primary.clone(),
            start_ts: request.start_ts,
            lock_ttl: request.lock_ttl,
            for_update_ts: request.for_update_ts,
            should_not_exist: *should_not_exist,
            min_commit_ts: request.min_commit_ts,
        };
        match pessimistic::acquire_pessimistic_lock(&reader, &mut txn, &lock) {
            Ok(value) => values.push(value),
            Err(TxnError::KeyIsLocked { key, lock }) => return Ok(Locking::Blocked(key, lock)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Locking::Done(values, Sealed::new(&reader, txn)?))
}

/// `KvResolveLock`: commits or rolls back the locks of the transactions in `fates`
/// (`(start_ts, commit_ts)`, 0 = roll back) on the given keys, or on the whole Region
/// (found through the lock index) when no key is given, in batches of [`SWEEP_BATCH`].
pub fn resolve_lock(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    fates: Vec<(u64, u64)>,
    keys: Vec<Vec<u8>>,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let fate_of = |start_ts: u64| named(&fates, start_ts);
        if !keys.is_empty() {
            check_keys(&scope, api, KeyMode::Txn, &keys)?;
            return resolve_keys(&cx, &scope, &keys, &fate_of).await;
        }
        let region = &scope.region;
        let mut start = region.start_key.clone();
        loop {
            let keys = cx
                .node
                .lock_index
                .keys(&start, &region.end_key, SWEEP_BATCH, |ts| fate_of(ts).is_some());
            let Some(last) = keys.last().cloned() else { return Ok(()) };
            resolve_keys(&cx, &scope, &keys, &fate_of).await?;
            if keys.len() < SWEEP_BATCH {
                return Ok(());
            }
            start = last;
            start.push(0);
        }
    })
}

/// `KvResolveLock` for a caller that may only read the keys: it must be able to settle a
/// lock it meets to read past it, but not to decide a transaction's outcome. Each lock is
/// resolved as the node itself finds its transaction's fate from the primary (as the GC
/// worker does, rolling back an expired one), and only where that is the outcome the
/// caller names. A named outcome the primary contradicts is refused (a reader rolling back
/// a secondary of a committed transaction would break its atomicity), and so is a lock
/// whose transaction is still running (the caller checks its status again later).
pub fn resolve_lock_as_reader(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    fates: Vec<(u64, u64)>,
    keys: Vec<Vec<u8>>,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let claimed = |start_ts: u64| named(&fates, start_ts);
        if !keys.is_empty() {
            check_keys(&scope, api, KeyMode::Txn, &keys)?;
        }
        let region = &scope.region;
        let mut start = region.start_key.clone();
        // The fates found so far, by start timestamp: one primary asked per transaction.
        let mut found: Vec<(u64, TimeStamp)> = Vec::new();
        loop {
            // Given keys are looked at once; a Region's locks a batch at a time.
            let batch = match keys.is_empty() {
                true => (cx.node.lock_index)
                    .keys(&start, &region.end_key, SWEEP_BATCH, |ts| claimed(ts).is_some()),
                false => keys.clone(),
            };
            let locks: Vec<(Vec<u8>, Lock)> = {
                let snapshot = cx.node.engine.snapshot();
                let reader = MvccReader::new(&*snapshot);
                let mut locks = Vec::with_capacity(batch.len());
                for key in &batch {
                    match reader.load_lock(key)? {
                        Some(lock) if claimed(lock.start_ts).is_some() => {
                            locks.push((key.clone(), lock))
                        }
                        _ => {}
                    }
                }
                locks
            };
            for (key, lock) in locks {
                let known = found.iter().find(|(ts, _)| *ts == lock.start_ts).map(|(_, f)| *f);
                let fate = match known {
                    Some(fate) => fate,
                    None => {
                        let now = TimeStamp::compose(cx.now().wall_ms, 0);
                        // A primary not written yet is reported running while its
                        // transaction's locks may live, and rolled back only after.
                        let asked = super::resolve::fate(&cx, &lock, now, false).await?;
                        let Some(fate) = asked else {
                            return Err(TxnError::Invalid(format!(
                                "transaction {} is still running: a caller that may only read cannot resolve its locks",
                                lock.start_ts
                            ))
                            .into());
                        };
                        found.push((lock.start_ts, fate));
                        fate
                    }
                };
                let named = claimed(lock.start_ts).unwrap_or_default();
                if fate.0 != named {
                    return Err(TxnError::Invalid(format!(
                        "transaction {} is {} by its primary, not {}: a caller that may only read cannot decide it",
                        lock.start_ts,
                        outcome(fate.0),
                        outcome(named)
                    ))
                    .into());
                }
                let start_ts = lock.start_ts;
                resolve_keys(&cx, &scope, &[key], &|ts| (ts == start_ts).then_some(fate.0)).await?;
            }
            if !keys.is_empty() || batch.len() < SWEEP_BATCH {
                return Ok(());
            }
            let Some(last) = batch.last() else { return Ok(()) };
            start = last.clone();
            start.push(0);
        }
    })
}

/// The commit timestamp (0 = rolled back) `fates` names for the transaction started at
/// `start_ts`.
fn named(fates: &[(u64, u64)], start_ts: u64) -> Option<u64> {
    fates.iter().find(|(ts, _)| *ts == start_ts).map(|(_, commit)| *commit)
}

/// A resolution's outcome, for messages.
fn outcome(commit_ts: u64) -> String {
    match commit_ts {
        0 => "rolled back".to_string(),
        ts => format!("committed at {ts}"),
    }
}

/// `KvScanLock`'s request.
#[derive(Clone, Debug)]
pub struct ScanLock {
    /// First key.
    pub start: Vec<u8>,
    /// End; empty = unbounded.
    pub end: Vec<u8>,
    /// Most locks; 0 means all of them, as in TiKV (bounded by the response size).
    pub limit: u32,
    /// Only locks of transactions started at or below this.
    pub max_version: u64,
}

/// `KvScanLock`: locks in the range, in key order.
pub fn scan_lock(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    request: ScanLock,
) -> Command<Vec<(Vec<u8>, Lock)>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        let (start, end) = clamp_range(&scope, api, KeyMode::Txn, &request.start, &request.end)?;
        if crate::inverted(&start, &end) {
            return Ok(Vec::new());
        }
        let limit = if request.limit == 0 { usize::MAX } else { request.limit as usize };
        let max = request.max_version;
        let node = &cx.node;
        let snapshot = node.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        let mut budget = ResponseBudget::new(node.settings().max_response_bytes);
        let mut locks = Vec::new();
        let mut from = start;
        // The index may name locks storage no longer has (removed since it was read):
        // ask it again for what those left short, or a page would end early and the
        // client would take the range for free of locks.
        while locks.len() < limit {
            let want = limit - locks.len();
            let keys = node.lock_index.keys(&from, &end, want, |ts| ts <= max);
            let exhausted = keys.len() < want;
            let Some(last) = keys.last() else { break };
            from = last.clone();
            from.push(0);
            for key in keys {
                // The index narrows the search; storage has the lock itself.
                if let Some(lock) = reader.load_lock(&key)?.filter(|l| l.start_ts <= max) {
                    budget.charge(key.len() + prost::Message::encoded_len(&lock) + 16)?;
                    locks.push((key, lock));
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(locks)
    })
}

/// `KvGC`: removes versions of the Region's keys invisible at or above `safe_point`.
pub fn gc(node: &Arc<TxnNode>, safe_point: TimeStamp) -> Command<usize> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        gc_keys(&cx, &scope, safe_point).await
    })
}

/// The GC worker's pass over one Region led here: locks of transactions over at or below
/// `safe_point` resolved as a reader would resolve them, then versions no reader at or
/// above it can see removed. Returns how many versions.
pub fn gc_region(node: &Arc<TxnNode>, safe_point: TimeStamp) -> Command<usize> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(SWEEP).await?;
        super::resolve::resolve_old_locks(&cx, &scope, safe_point, GC_LOCKS_PER_PASS).await?;
        gc_keys(&cx, &scope, safe_point).await
    })
}

async fn gc_keys(cx: &Cx, scope: &Scope, safe_point: TimeStamp) -> CommandResult<usize> {
    let region = &scope.region;
    let mut start = region.start_key.clone();
    let mut deleted = 0;
    loop {
        let snapshot = cx.node.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        let keys = reader.keys_with_writes(&start, &region.end_key, false, SWEEP_BATCH)?;
        drop(reader);
        drop(snapshot);
        let Some(last) = keys.last().cloned() else { return Ok(deleted) };
        deleted += write_keys(cx, scope, &keys, |reader, txn| {
            keys.iter().try_fold(0, |n, key| Ok(n + gc::gc_key(reader, txn, key, safe_point)?))
        })
        .await?;
        if keys.len() < SWEEP_BATCH {
            return Ok(deleted);
        }
        start = last;
        start.push(0);
    }
}

/// `KvDeleteRange`: deletes every transactional record in the range (within the Region);
/// `notify_only` deletes nothing.
pub fn delete_range(
    node: &Arc<TxnNode>,
    api: ApiVersion,
    start: Vec<u8>,
    end: Vec<u8>,
    notify_only: bool,
) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        if !end.is_empty() && start >= end {
            return Err(CommandError::invalid("delete range needs start key < end key"));
        }
        let (start, end) = clamp_range(&scope, api, KeyMode::Txn, &start, &end)?;
        if notify_only {
            return Ok(());
        }
        destroy_keys(&cx, &scope, start, &end).await
    })
}

/// Deletes every transactional record of user keys in `[start, end)` of a Region led here
/// (`UnsafeDestroyRange` runs it on each one).
pub fn destroy_range(node: &Arc<TxnNode>, start: Vec<u8>, end: Vec<u8>) -> Command<()> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(SWEEP).await?;
        let (start, end) = super::clamp_to_region(&scope.region, &start, &end);
        destroy_keys(&cx, &scope, start, &end).await
    })
}

async fn destroy_keys(cx: &Cx, scope: &Scope, mut start: Vec<u8>, end: &[u8]) -> CommandResult<()> {
    loop {
        let mut keys = {
            let snapshot = cx.node.engine.snapshot();
            let reader = MvccReader::new(&*snapshot);
            reader.keys_with_writes(&start, end, false, SWEEP_BATCH)?
        };
        keys.extend(cx.node.lock_index.keys(&start, end, SWEEP_BATCH, |_| true));
        keys.sort();
        keys.dedup();
        keys.truncate(SWEEP_BATCH);
        let Some(last) = keys.last().cloned() else { return Ok(()) };
        write_keys(cx, scope, &keys, |reader, txn| {
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

/// `ReadTxnKeys` (node to node): what each key holds for transaction `start_ts`, read on
/// the Region's leader without changing anything.
pub fn read_txn_keys(
    node: &Arc<TxnNode>,
    keys: Vec<Vec<u8>>,
    start_ts: TimeStamp,
) -> Command<Vec<KeyState>> {
    Command::new(node, move |cx| async move {
        let scope = cx.gate(READ).await?;
        if let Some(key) = keys.iter().find(|key| !scope.region.contains(key)) {
            let region = Box::new(scope.region.clone());
            return Err(CommandError::KeyNotInRegion { key: key.clone(), region });
        }
        let snapshot = cx.node.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        keys.iter().map(|key| key_state(&reader, key, start_ts)).collect()
    })
}

fn key_state(reader: &MvccReader<'_>, key: &[u8], start_ts: TimeStamp) -> CommandResult<KeyState> {
    Ok(match reader.load_lock(key)? {
        Some(lock) if lock.start_ts == start_ts.0 => match lock.kind() {
            LockType::Pessimistic => KeyState::PessimisticLocked,
            _ => KeyState::Prewritten(lock.min_commit_ts),
        },
        _ => match reader.get_txn_commit_record(key, start_ts)? {
            TxnCommitRecord::Committed(ts, _) => KeyState::Committed(ts),
            TxnCommitRecord::RolledBack => KeyState::RolledBack,
            TxnCommitRecord::None => KeyState::None,
        },
    })
}
