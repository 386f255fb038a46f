//! The TTL sweeper: deletes expired raw values from disk.
//!
//! Expired values are already invisible to reads; the sweeper reclaims their space. It
//! walks every Region this node leads, collects expired keys from a snapshot, and deletes
//! them through Raft under their latches, re-checking under the latch that each is still
//! expired (a client may have written a new value since the scan).

use crate::clock::now_secs;
use crate::context::NodeContext;
use scandium_storage::Cf;
use scandium_txn::raw;
use scandium_types::Region;
use std::sync::Arc;
use std::time::Duration;

/// Keys examined per step, so a sweep never holds many latches or builds a large command.
const KEYS_PER_STEP: usize = 256;

/// Runs sweeps forever, one every `interval`.
pub async fn run(node: Arc<NodeContext>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match sweep(&node).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted expired raw values"),
            Err(error) => tracing::warn!(%error, "TTL sweep stopped early"),
        }
    }
}

/// The column families holding raw values (see `scandium_txn::raw`).
const RAW_CFS: [Cf; 3] = [Cf::Raw, Cf::RawLock, Cf::RawWrite];

/// One pass over every Region led here; returns how many values were deleted.
pub async fn sweep(node: &NodeContext) -> Result<usize, crate::error::RequestError> {
    let mut deleted = 0;
    for status in node.registry.all() {
        if !status.ready_for_reads {
            continue;
        }
        for cf in RAW_CFS {
            deleted += sweep_region(node, &status.region, cf).await?;
        }
    }
    Ok(deleted)
}

async fn sweep_region(
    node: &NodeContext,
    region: &Region,
    cf: Cf,
) -> Result<usize, crate::error::RequestError> {
    let mut deleted = 0;
    let mut start = region.start_key.clone();
    loop {
        let now = now_secs();
        let raw::KeyPage { keys, resume_from } = raw::expired_keys(
            &*node.engine.snapshot(),
            cf,
            &start,
            &region.end_key,
            KEYS_PER_STEP,
            now,
        )?;
        if !keys.is_empty() {
            deleted += node
                .write_with(region, &keys, |snapshot, batch| {
                    let mut count = 0;
                    for key in &keys {
                        let stored = snapshot.get(cf, key)?;
                        let expired = stored
                            .as_deref()
                            .and_then(raw::decode_value)
                            .is_some_and(|v| v.is_expired(now));
                        if expired {
                            raw::delete(batch, cf, key.clone());
                            count += 1;
                        }
                    }
                    Ok(count)
                })
                .await?;
        }
        match resume_from {
            Some(next) => start = next,
            None => return Ok(deleted),
        }
    }
}
