//! The GC worker: when the GC safe point advances, resolves the locks of transactions that
//! started at or below it and removes versions no reader at or above it can see.
//!
//! Locks go first: a lock below the safe point whose transaction is over (committed,
//! rolled back, or expired) is resolved the way a reader would resolve it, asking the
//! transaction's primary (and, for async commit, its secondaries: see `resolver.rs`).
//! Locks of transactions still alive are left for their owners.

use crate::clock::now_ms;
use crate::context::NodeContext;
use crate::txn::TxnResult;
use scandium_txn::actions::cleanup::{CheckTxnStatus, TxnStatus};
use scandium_txn::mvcc::{Lock, MvccReader};
use scandium_types::{Region, TimeStamp};
use std::sync::Arc;
use std::time::Duration;

/// Locks examined per Region per pass.
const LOCKS_PER_PASS: usize = 1024;

/// Runs forever: every `interval`, collects garbage if the safe point moved.
pub async fn run(node: Arc<NodeContext>, interval: Duration) {
    let mut done = TimeStamp::ZERO;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let safe_point = TimeStamp(node.placement.read().gc_safe_point());
        if safe_point <= done {
            continue;
        }
        match collect(&node, safe_point).await {
            Ok(deleted) => {
                tracing::debug!(safe_point = safe_point.0, deleted, "garbage collected");
                crate::metrics::METRICS.gc_deleted.inc_by(deleted as u64);
                done = safe_point;
            }
            Err(error) => tracing::warn!(?error, "GC pass failed; will retry"),
        }
    }
}

/// One pass over every Region led here; returns how many versions were deleted.
pub async fn collect(node: &NodeContext, safe_point: TimeStamp) -> TxnResult<usize> {
    let mut deleted = 0;
    for status in node.registry.all() {
        if !status.ready_for_reads {
            continue;
        }
        resolve_old_locks(node, &status.region, safe_point).await?;
        deleted += node.gc_region(&status.region, safe_point).await?;
    }
    Ok(deleted)
}

async fn resolve_old_locks(
    node: &NodeContext,
    region: &Region,
    safe_point: TimeStamp,
) -> TxnResult<()> {
    let keys = node
        .lock_index
        .keys(&region.start_key, &region.end_key, LOCKS_PER_PASS, |ts| ts <= safe_point.0);
    let snapshot = node.engine.snapshot();
    let reader = MvccReader::new(&*snapshot);
    let mut locks = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(lock) = reader.load_lock(&key)? {
            locks.push((key, lock));
        }
    }
    drop(snapshot);
    let now = TimeStamp::compose(now_ms(), 0);
    for (key, lock) in locks {
        if let Some(commit_ts) = fate(node, &lock, now).await? {
            node.resolve_keys_of(region, &[key], lock.start_ts, commit_ts).await?;
        }
    }
    Ok(())
}

/// The commit timestamp (0 = rolled back) of the transaction owning `lock`, or `None` if
/// it is still running.
async fn fate(node: &NodeContext, lock: &Lock, now: TimeStamp) -> TxnResult<Option<TimeStamp>> {
    let request = CheckTxnStatus {
        primary: lock.primary.clone(),
        lock_ts: lock.ts(),
        current_ts: now,
        rollback_if_not_exist: true,
        verify_is_primary: true,
        ..Default::default()
    };
    let status = node.check_txn_status_anywhere(request).await?;
    match status {
        TxnStatus::Committed(ts) => Ok(Some(ts)),
        TxnStatus::RolledBack => Ok(Some(TimeStamp::ZERO)),
        TxnStatus::Locked(primary) if primary.use_async_commit && primary.is_expired(now) => {
            Ok(Some(node.resolve_async_commit(&lock.primary, &primary).await?))
        }
        TxnStatus::Locked(_) => Ok(None),
    }
}
