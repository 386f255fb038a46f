//! The TTL sweeper: deletes expired raw values from disk.
//!
//! Expired values are already invisible to reads; the sweeper reclaims their space. It
//! runs the sweep command (`scandium_txn::command::raw::sweep_expired`) on every Region
//! this node leads, for each raw namespace.

use crate::commands::{Storage, Target};
use scandium_storage::Cf;
use scandium_txn::command::raw::sweep_expired;
use std::sync::Arc;
use std::time::Duration;

/// Runs sweeps forever, one every `interval`.
pub async fn run(storage: Arc<Storage>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match sweep(&storage).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted expired raw values"),
            Err(error) => tracing::warn!(%error, "TTL sweep stopped early"),
        }
    }
}

/// The column families holding raw values (see `scandium_txn::raw`).
const RAW_CFS: [Cf; 3] = [Cf::Raw, Cf::RawLock, Cf::RawWrite];

/// One pass over every Region led here; returns how many values were deleted.
pub async fn sweep(storage: &Storage) -> Result<usize, crate::error::RequestError> {
    let mut deleted = 0;
    for status in storage.registry().all().into_iter().filter(|s| s.ready_for_reads) {
        for cf in RAW_CFS {
            let command = sweep_expired(storage.txn(), cf);
            deleted += storage.run(Target::Region(status.region.id), command).await?;
        }
    }
    Ok(deleted)
}
