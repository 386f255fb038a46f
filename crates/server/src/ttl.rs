//! The TTL sweeper: deletes expired raw values from disk.
//!
//! Expired values are already invisible to reads; the sweeper reclaims their space. It
//! walks every Region this node leads, collects expired keys from a snapshot, and deletes
//! them through Raft under their latches, re-checking under the latch that each is still
//! expired (a client may have written a new value since the scan).

use crate::clock::now_secs;
use crate::context::NodeContext;
use scandium_txn::raw;
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

/// One pass over every Region led here; returns how many values were deleted.
pub async fn sweep(node: &NodeContext) -> Result<usize, crate::error::RequestError> {
    let mut deleted = 0;
    for status in node.registry.all() {
        if !status.ready_for_reads {
            continue;
        }
        let region = status.region;
        let mut start = region.start_key.clone();
        loop {
            let now = now_secs();
            let raw::KeyPage { keys, resume_from } = raw::expired_keys(
                &*node.engine.snapshot(),
                &start,
                &region.end_key,
                KEYS_PER_STEP,
                now,
            )?;
            if !keys.is_empty() {
                deleted += node
                    .write_with(&region, &keys, |snapshot, batch| {
                        let mut count = 0;
                        for key in &keys {
                            let stored = snapshot.get(scandium_storage::Cf::Raw, key)?;
                            let expired = stored
                                .as_deref()
                                .and_then(raw::decode_value)
                                .is_some_and(|v| v.is_expired(now));
                            if expired {
                                raw::delete(batch, key.clone());
                                count += 1;
                            }
                        }
                        Ok(count)
                    })
                    .await?;
            }
            match resume_from {
                Some(next) => start = next,
                None => break,
            }
        }
    }
    Ok(deleted)
}
