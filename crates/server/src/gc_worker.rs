//! The GC worker: when the GC safe point advances, resolves the locks of transactions that
//! started at or below it and removes versions no reader at or above it can see, Region by
//! Region for the Regions led here (`scandium_txn::command::txn::gc_region`).
//!
//! Locks go first: a lock below the safe point whose transaction is over (committed,
//! rolled back, or expired) is resolved the way a reader would resolve it, asking the
//! transaction's primary (and, for async commit, its secondaries) on their Regions'
//! leaders. Locks of transactions still alive are left for their owners.

use crate::commands::{Storage, Target};
use crate::placement::Placement;
use crate::txn_error::TxnResult;
use scandium_txn::command::txn::gc_region;
use scandium_types::TimeStamp;
use std::sync::Arc;
use std::time::Duration;

/// Runs forever: every `interval`, collects garbage if the safe point moved.
pub async fn run(storage: Arc<Storage>, placement: Arc<Placement>, interval: Duration) {
    let mut done = TimeStamp::ZERO;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let safe_point = TimeStamp(placement.read().gc_safe_point());
        if safe_point <= done {
            continue;
        }
        match collect(&storage, safe_point).await {
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
pub async fn collect(storage: &Storage, safe_point: TimeStamp) -> TxnResult<usize> {
    let mut deleted = 0;
    for status in storage.registry().all().into_iter().filter(|s| s.ready_for_reads) {
        let command = gc_region(storage.txn(), safe_point);
        deleted += storage.run(Target::Region(status.region.id), command).await?;
    }
    Ok(deleted)
}
