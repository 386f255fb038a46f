//! Deciding the fate of transactions whose client vanished, across Regions.
//!
//! An async-commit transaction is committed as soon as every one of its locks is written,
//! so its primary alone cannot tell whether it committed, and `CheckTxnStatus` never rolls
//! such a primary back. Once the primary's TTL has run out, the node decides the fate
//! itself, exactly as client-go does: it asks every secondary (`check_secondary_locks`,
//! which also writes a rollback record on a secondary that has no lock yet, so a late
//! prewrite cannot revive the transaction). If every secondary holds its lock, the
//! transaction committed at the largest `min_commit_ts`; otherwise it is rolled back. Then
//! every key is resolved accordingly. The GC worker decides the fate of old locks the same
//! way.
//!
//! Secondaries live in other Regions, led anywhere: each question is an
//! [`Effect::Remote`](super::Effect::Remote), which the driver carries out on the key's
//! Region's leader (locally through `local::local_call` when that is here). Never from the
//! local engine of a follower, whose state may lag the leader's.

use super::{CommandResult, Cx, KeyState, RemoteCall, RemoteReply, Scope, SecondaryFate};
use crate::actions::cleanup::{CheckTxnStatus, TxnStatus};
use crate::mvcc::{Lock, MvccReader};
use scandium_types::TimeStamp;

/// Decides and carries out the fate of the async-commit transaction whose (expired) primary
/// lock is `primary`: returns its commit timestamp, or zero if rolled back.
pub(crate) async fn resolve_async_commit(
    cx: &Cx,
    primary_key: &[u8],
    primary: &Lock,
) -> CommandResult<TimeStamp> {
    let start_ts = primary.ts();
    let mut commit_ts = TimeStamp(primary.min_commit_ts);
    for key in &primary.secondaries {
        let call = RemoteCall::CheckSecondary { key: key.clone(), start_ts };
        match cx.remote(call).await? {
            RemoteReply::Secondary(SecondaryFate::Locked(min_commit_ts)) => {
                commit_ts = commit_ts.max(TimeStamp(min_commit_ts));
            }
            RemoteReply::Secondary(SecondaryFate::Committed(ts)) => {
                commit_ts = ts;
                break;
            }
            RemoteReply::Secondary(SecondaryFate::RolledBack) => {
                commit_ts = TimeStamp::ZERO;
                break;
            }
            other => return Err(mismatched(other)),
        }
    }
    resolve_everywhere(cx, primary_key, primary, commit_ts).await?;
    Ok(commit_ts)
}

/// For an async-commit transaction still within its TTL: if every secondary already holds
/// its prewrite lock (or was committed), the transaction is committed (at the largest
/// `min_commit_ts`), so every key is committed now rather than make readers wait for the
/// client's background commit. Returns the commit timestamp, or `None` if some secondary
/// is not prewritten yet (nothing is changed then).
pub(crate) async fn commit_async_if_complete(
    cx: &Cx,
    primary_key: &[u8],
    primary: &Lock,
) -> CommandResult<Option<TimeStamp>> {
    let start_ts = primary.ts();
    let mut commit_ts = TimeStamp(primary.min_commit_ts);
    for key in &primary.secondaries {
        match cx.remote(RemoteCall::ReadTxnKey { key: key.clone(), start_ts }).await? {
            RemoteReply::KeyState(KeyState::Prewritten(min_commit_ts)) => {
                commit_ts = commit_ts.max(TimeStamp(min_commit_ts))
            }
            RemoteReply::KeyState(KeyState::Committed(ts)) => {
                commit_ts = ts;
                break;
            }
            RemoteReply::KeyState(_) => return Ok(None),
            other => return Err(mismatched(other)),
        }
    }
    resolve_everywhere(cx, primary_key, primary, commit_ts).await?;
    Ok(Some(commit_ts))
}

async fn resolve_everywhere(
    cx: &Cx,
    primary_key: &[u8],
    primary: &Lock,
    commit_ts: TimeStamp,
) -> CommandResult<()> {
    let start_ts = primary.ts();
    let keys = std::iter::once(primary_key).chain(primary.secondaries.iter().map(Vec::as_slice));
    for key in keys {
        let call = RemoteCall::ResolveKey { key: key.to_vec(), start_ts, commit_ts };
        cx.remote(call).await?;
    }
    Ok(())
}

/// Resolves the locks of the Region in `scope` (at most `limit` of them) whose
/// transactions started at or below `safe_point` and are over, asking each one's primary.
/// Locks of transactions still alive are left for their owners.
pub(crate) async fn resolve_old_locks(
    cx: &Cx,
    scope: &Scope,
    safe_point: TimeStamp,
    limit: usize,
) -> CommandResult<()> {
    let region = &scope.region;
    let keys =
        cx.node.lock_index.keys(&region.start_key, &region.end_key, limit, |ts| ts <= safe_point.0);
    let locks = {
        let snapshot = cx.node.engine.snapshot();
        let reader = MvccReader::new(&*snapshot);
        let mut locks = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(lock) = reader.load_lock(&key)? {
                locks.push((key, lock));
            }
        }
        locks
    };
    let now = TimeStamp::compose(cx.now().wall_ms, 0);
    for (key, lock) in locks {
        if let Some(commit_ts) = fate(cx, &lock, now, true).await? {
            let start_ts = lock.start_ts;
            resolve_keys(cx, scope, &[key], &|ts| (ts == start_ts).then_some(commit_ts.0)).await?;
        }
    }
    Ok(())
}

/// The commit timestamp (0 = rolled back) of the transaction owning `lock`, or `None` if
/// it is still running. A primary with no lock and no record is rolled back (so that its
/// late prewrite fails) if `rollback_if_not_exist`, and reported running otherwise.
pub(crate) async fn fate(
    cx: &Cx,
    lock: &Lock,
    now: TimeStamp,
    rollback_if_not_exist: bool,
) -> CommandResult<Option<TimeStamp>> {
    let status = CheckTxnStatus {
        primary: lock.primary.clone(),
        lock_ts: lock.ts(),
        current_ts: now,
        rollback_if_not_exist,
        verify_is_primary: true,
        ..Default::default()
    };
    match cx.remote(RemoteCall::CheckTxnStatus(status)).await? {
        RemoteReply::Status(TxnStatus::Committed(ts)) => Ok(Some(ts)),
        RemoteReply::Status(TxnStatus::RolledBack) => Ok(Some(TimeStamp::ZERO)),
        RemoteReply::Status(TxnStatus::Locked(primary))
            if primary.use_async_commit && primary.is_expired(now) =>
        {
            Ok(Some(resolve_async_commit(cx, &lock.primary, &primary).await?))
        }
        RemoteReply::Status(TxnStatus::Locked(_)) => Ok(None),
        other => Err(mismatched(other)),
    }
}

/// Resolves the locks on `keys` whose transactions `fate_of` knows.
pub(crate) async fn resolve_keys(
    cx: &Cx,
    scope: &Scope,
    keys: &[Vec<u8>],
    fate_of: &(impl Fn(u64) -> Option<u64> + Sync),
) -> CommandResult<()> {
    let resolved = super::write_keys(cx, scope, keys, |reader, txn| {
        let mut resolved = 0;
        for key in keys {
            // Re-read under the latch: the lock may have been resolved meanwhile.
            let Some(lock) = reader.load_lock(key)? else { continue };
            if let Some(commit_ts) = fate_of(lock.start_ts) {
                crate::actions::cleanup::resolve_lock(
                    reader,
                    txn,
                    key,
                    lock,
                    TimeStamp(commit_ts),
                )?;
                resolved += 1;
            }
        }
        Ok(resolved)
    })
    .await?;
    cx.node.count_resolved(resolved);
    Ok(())
}

fn mismatched(reply: RemoteReply) -> super::CommandError {
    super::CommandError::Internal(format!("a remote call was answered with {reply:?}"))
}
