//! Prewrite: the first phase of two-phase commit. Each key gets the transaction's lock, or
//! the request fails for every key (the caller writes nothing unless all keys succeed).

use crate::actions::place_value;
use crate::error::{Result, TxnError};
use crate::mvcc::{Lock, LockType, MvccReader, MvccTxn, TxnCommitRecord, WriteType};
use scandium_types::TimeStamp;

/// What a mutation does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutationOp {
    /// Write a value.
    Put,
    /// Delete the key.
    Delete,
    /// Lock the key without changing it.
    Lock,
    /// Write a value; the key must not exist.
    Insert,
    /// Only check that the key does not exist; writes nothing.
    CheckNotExists,
}

/// One key of a prewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// What to do.
    pub op: MutationOp,
    /// The key.
    pub key: Vec<u8>,
    /// The value (Put and Insert).
    pub value: Vec<u8>,
}

/// How a pessimistic transaction's prewrite treats a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PessimisticAction {
    /// The key was not locked pessimistically: check for conflicts as optimistic
    /// transactions do.
    SkipPessimisticCheck,
    /// The key must hold this transaction's pessimistic lock.
    DoPessimisticCheck,
    /// Like `SkipPessimisticCheck`, plus the existence check of inserts.
    DoConstraintCheck,
}

/// Properties shared by every key of one prewrite.
#[derive(Clone, Debug, Default)]
pub struct TxnProps {
    /// The transaction's start timestamp.
    pub start_ts: TimeStamp,
    /// Its primary key.
    pub primary: Vec<u8>,
    /// Lock TTL in milliseconds.
    pub lock_ttl: u64,
    /// Number of keys in the transaction.
    pub txn_size: u64,
    /// Pessimistic transactions: the latest `for_update_ts`; zero for optimistic ones.
    pub for_update_ts: TimeStamp,
    /// Async commit: the transaction is committed once every lock is written.
    pub use_async_commit: bool,
    /// Async commit, primary only: the other keys.
    pub secondaries: Vec<Vec<u8>>,
    /// The client's lower bound for the commit timestamp.
    pub min_commit_ts: TimeStamp,
}

/// What prewriting one key decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrewriteOutcome {
    /// Write this lock (its `min_commit_ts` may still be raised for async commit).
    Lock(Lock),
    /// The key already holds this transaction's prewrite lock (a retry): nothing to write.
    AlreadyLocked(Lock),
    /// The transaction already committed this key, at this timestamp (a retry after
    /// commit): nothing to do.
    AlreadyCommitted(TimeStamp),
    /// A `CheckNotExists` passed; nothing to write.
    Checked,
}

/// Decides one key of a prewrite. Long values are written to `txn` right away; the lock
/// is returned for the caller to write once every key has succeeded.
pub fn prewrite_key(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    props: &TxnProps,
    mutation: &Mutation,
    action: PessimisticAction,
) -> Result<PrewriteOutcome> {
    let key = &mutation.key;
    let pessimistic_lock = match reader.load_lock(key)? {
        Some(lock) if lock.start_ts != props.start_ts.0 => {
            return Err(TxnError::KeyIsLocked { key: key.clone(), lock: Box::new(lock) });
        }
        Some(lock) if lock.kind() == LockType::Pessimistic => {
            if action != PessimisticAction::DoPessimisticCheck {
                return Err(TxnError::Invalid(format!("key {key:?} holds a pessimistic lock but is prewritten without a pessimistic check")));
            }
            Some(lock)
        }
        Some(lock) => return Ok(PrewriteOutcome::AlreadyLocked(lock)),
        None => None,
    };
    if pessimistic_lock.is_none() {
        if action == PessimisticAction::DoPessimisticCheck {
            // The lock is gone: committed already (a retry), or lost/rolled back.
            return match reader.get_txn_commit_record(key, props.start_ts)? {
                TxnCommitRecord::Committed(commit_ts, _) => {
                    Ok(PrewriteOutcome::AlreadyCommitted(commit_ts))
                }
                _ => Err(TxnError::PessimisticLockNotFound {
                    start_ts: props.start_ts,
                    key: key.clone(),
                }),
            };
        }
        if let Some(done) = check_for_newer_version(reader, props, key)? {
            return Ok(done);
        }
        if matches!(mutation.op, MutationOp::Insert | MutationOp::CheckNotExists)
            && reader.get_value(key, TimeStamp::MAX)?.is_some()
        {
            return Err(TxnError::AlreadyExist { key: key.clone() });
        }
    }
    let lock_type = match mutation.op {
        MutationOp::Put | MutationOp::Insert => LockType::Put,
        MutationOp::Delete => LockType::Delete,
        MutationOp::Lock => LockType::Lock,
        MutationOp::CheckNotExists => return Ok(PrewriteOutcome::Checked),
    };
    let short_value = match lock_type {
        LockType::Put => place_value(txn, key, props.start_ts, mutation.value.clone()),
        _ => None,
    };
    let is_primary = *key == props.primary;
    // The pessimistic lock may carry a longer life (heartbeats extend it) and a higher
    // commit floor than this request: neither goes down (as in TiKV), or another
    // transaction could roll back a live primary early.
    let (held_ttl, held_min_commit_ts) =
        pessimistic_lock.map_or((0, 0), |lock| (lock.ttl, lock.min_commit_ts));
    Ok(PrewriteOutcome::Lock(Lock {
        lock_type: lock_type as i32,
        primary: props.primary.clone(),
        start_ts: props.start_ts.0,
        ttl: props.lock_ttl.max(held_ttl),
        short_value,
        for_update_ts: props.for_update_ts.0,
        txn_size: props.txn_size,
        min_commit_ts: props.min_commit_ts.0.max(held_min_commit_ts),
        use_async_commit: props.use_async_commit,
        secondaries: if props.use_async_commit && is_primary {
            props.secondaries.clone()
        } else {
            Vec::new()
        },
    }))
}

/// Refuses the prewrite if another transaction committed the key after our start, or if
/// we were rolled back; recognises our own earlier commit (a retry). A commit at exactly
/// our start is no conflict: reads at our start see it (as TiKV judges it). It happens:
/// an async-commit transaction's commit timestamp comes from `max_ts`, not from the
/// oracle, and the oracle may hand the same timestamp to the next transaction as its
/// start (`every_protocol_commits_v1` failed so, once).
fn check_for_newer_version(
    reader: &MvccReader<'_>,
    props: &TxnProps,
    key: &[u8],
) -> Result<Option<PrewriteOutcome>> {
    let mut conflict = None;
    for item in reader.writes_at_or_below(key, TimeStamp::MAX) {
        let (commit_ts, write) = item?;
        if commit_ts < props.start_ts {
            break;
        }
        let own = write.start_ts == props.start_ts.0;
        let rolled_back = (own && write.kind() == WriteType::Rollback)
            || (commit_ts == props.start_ts && write.has_overlapped_rollback);
        if rolled_back {
            return Err(write_conflict(props, key, TimeStamp(write.start_ts), commit_ts, true));
        }
        if own {
            return Ok(Some(PrewriteOutcome::AlreadyCommitted(commit_ts)));
        }
        if write.kind() != WriteType::Rollback && commit_ts > props.start_ts && conflict.is_none() {
            conflict =
                Some(write_conflict(props, key, TimeStamp(write.start_ts), commit_ts, false));
        }
    }
    match conflict {
        Some(error) => Err(error),
        None => Ok(None),
    }
}

fn write_conflict(
    props: &TxnProps,
    key: &[u8],
    conflict_start_ts: TimeStamp,
    conflict_commit_ts: TimeStamp,
    self_rolled_back: bool,
) -> TxnError {
    TxnError::WriteConflict {
        start_ts: props.start_ts,
        conflict_start_ts,
        conflict_commit_ts,
        key: key.to_vec(),
        primary: props.primary.clone(),
        self_rolled_back,
    }
}

/// The commit timestamp async commit and 1PC may use: above every timestamp a reader has
/// used here (`max_ts`), above the start and for-update timestamps, and at least what the
/// client asked for.
pub fn async_min_commit_ts(props: &TxnProps, max_ts: TimeStamp) -> TimeStamp {
    let floor = props.start_ts.max(props.for_update_ts).max(max_ts).next();
    floor.max(props.min_commit_ts)
}

/// One prewrite request: every key of one transaction in one Region.
#[derive(Clone, Copy, Debug)]
pub struct PrewriteRequest<'a> {
    /// What the keys share.
    pub props: &'a TxnProps,
    /// Each key's mutation and how its pessimistic lock is checked.
    pub mutations: &'a [(Mutation, PessimisticAction)],
    /// Commit in this one step if the request holds every key of the transaction.
    pub try_one_pc: bool,
    /// Refuse a commit timestamp above this (0: no bound).
    pub max_commit_ts: u64,
}

/// What a prewrite request decided.
#[derive(Debug, Default)]
pub struct Prewritten {
    /// Per-key errors; when non-empty nothing was written.
    pub errors: Vec<TxnError>,
    /// For async commit: the transaction may not commit below this.
    pub min_commit_ts: u64,
    /// For one-phase commit: the commit timestamp, 0 if 1PC was not done.
    pub one_pc_commit_ts: u64,
    /// For async commit and 1PC: the locks readers must see before storage has them.
    /// Hold it until the change is applied.
    pub memory_locks: Option<crate::concurrency::MemoryLockGuard>,
}

/// Prewrites every key of `request` into `txn`, or none if any key fails (then `errors`
/// says why). For async commit and 1PC the commit timestamp is chosen above `max_ts` while
/// the locks are published in memory, so that no reader can take a snapshot at or above
/// it without meeting them; with 1PC the locks are committed at once instead of written.
///
/// The caller must have synchronised `max_ts` since its peer became leader (a reader
/// served by the previous leader raised only that node's): this function cannot tell.
pub fn prewrite(
    reader: &MvccReader<'_>,
    txn: &mut MvccTxn,
    concurrency: &std::sync::Arc<crate::ConcurrencyManager>,
    request: PrewriteRequest<'_>,
) -> Result<Prewritten> {
    let props = request.props;
    let mut result = Prewritten::default();
    let mut locks: Vec<(Vec<u8>, Lock)> = Vec::new();
    // What an earlier attempt of this request already decided (its answer was lost).
    let mut decided = TimeStamp::ZERO;
    for (mutation, action) in request.mutations {
        match prewrite_key(reader, txn, props, mutation, *action) {
            Ok(PrewriteOutcome::Lock(lock)) => locks.push((mutation.key.clone(), lock)),
            Ok(PrewriteOutcome::AlreadyLocked(lock)) => {
                decided = decided.max(TimeStamp(lock.min_commit_ts))
            }
            Ok(PrewriteOutcome::AlreadyCommitted(commit_ts)) => decided = decided.max(commit_ts),
            Ok(PrewriteOutcome::Checked) => {}
            Err(e) => result.errors.push(e),
        }
    }
    if !result.errors.is_empty() {
        return Ok(result);
    }
    // A retry that finds every lock written, or committed, answers what they hold: a new
    // commit timestamp above a later read would have the client commit above what a
    // reader resolving the locks commits at.
    let fresh = !locks.is_empty() || decided == TimeStamp::ZERO;
    let mut commit_ts = decided;
    if (props.use_async_commit || request.try_one_pc) && fresh {
        result.memory_locks = Some(concurrency.lock_for_commit_ts(&mut locks, |max_ts, locks| {
            // Each lock's own floor counts too (a pessimistic lock's may be higher).
            let floor = locks.iter().map(|(_, lock)| TimeStamp(lock.min_commit_ts)).max();
            commit_ts =
                async_min_commit_ts(props, max_ts).max(decided).max(floor.unwrap_or_default());
            for (_, lock) in locks.iter_mut() {
                lock.min_commit_ts = commit_ts.0;
            }
        }));
    }
    if request.max_commit_ts != 0 && commit_ts.0 > request.max_commit_ts {
        result.errors.push(TxnError::Invalid(format!(
            "commit timestamp {commit_ts} would exceed max_commit_ts {}",
            request.max_commit_ts
        )));
        result.memory_locks = None;
        return Ok(result);
    }
    if request.try_one_pc {
        for (key, lock) in locks {
            crate::actions::cleanup::resolve_lock(reader, txn, &key, lock, commit_ts)?;
        }
        result.one_pc_commit_ts = commit_ts.0;
    } else {
        for (key, lock) in &locks {
            txn.put_lock(key, lock);
        }
        if props.use_async_commit {
            result.min_commit_ts = commit_ts.0;
        }
    }
    Ok(result)
}
