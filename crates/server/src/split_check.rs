//! Automatic split by size and keys: the server's driver of `scandium_raftstore::stats`.
//!
//! Every `split_check_interval_ms`, the Raft thread names the Regions led here that are due
//! for a measurement (never measured by this replica, or a sixteenth of the split size
//! written since the last one) and hands over one engine snapshot consistent with their
//! figures. A blocking task reads each of them once ([`measure`]); the Raft thread
//! corrects the Region's figures with what was found, and a Region past
//! `region_max_size` or `region_max_keys` is split at the keys the measurement picked,
//! through the same [`Splitter`] as `scandium ctl split` (placement learns both halves
//! before the split is reported done, and each new Region is led at once).

use crate::raft_driver::RaftHandle;
use crate::split::Splitter;
use scandium_raftstore::{measure, SplitPolicy};
use std::sync::Arc;
use std::time::Duration;

/// Split keys one measurement picks at most: a Region far past its size is cut into this
/// many pieces at once, and what remains is cut at the next check.
pub const MAX_SPLIT_KEYS_PER_CHECK: usize = 64;

/// Regions measured per check at most (a node that restarted has every Region to measure:
/// they are read a batch at a time, not all in one pass).
const MAX_MEASURED_PER_CHECK: usize = 64;

/// Measures the Regions led here and splits those that outgrew the policy.
pub struct SplitChecker {
    raft: RaftHandle,
    splitter: Arc<Splitter>,
    policy: SplitPolicy,
}

impl SplitChecker {
    /// A checker splitting by `policy` through `splitter`.
    pub fn new(raft: RaftHandle, splitter: Arc<Splitter>, policy: SplitPolicy) -> SplitChecker {
        SplitChecker { raft, splitter, policy }
    }

    /// Checks now (a node that restarted has every Region to measure) and then every
    /// `interval`, for ever.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            self.check().await;
            tokio::time::sleep(interval).await;
        }
    }

    /// One check: measure the Regions due, correct their figures, split the big ones.
    pub async fn check(&self) {
        let policy = self.policy;
        let Ok((mut due, snapshot)) =
            self.raft.with_store(move |store| store.due_for_measuring(&policy)).await
        else {
            return;
        };
        due.truncate(MAX_MEASURED_PER_CHECK);
        if due.is_empty() {
            return;
        }
        let measuring = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|(region, mark)| {
                    let found = measure(&region, &*snapshot, &policy);
                    (region, mark, found)
                })
                .collect::<Vec<_>>()
        });
        let Ok(measured) = measuring.await else { return };
        for (region, mark, found) in measured {
            let found = match found {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(region = region.id, %error, "cannot measure a region");
                    continue;
                }
            };
            let (size, keys) = (found.size, found.keys);
            let recorded = self
                .raft
                .with_store(move |store| store.record_measurement(&region, &mark, size, keys))
                .await;
            if recorded.is_err() || found.split_keys.is_empty() {
                continue;
            }
            let pieces = found.split_keys.len();
            match self.splitter.split_at_keys(found.split_keys).await {
                Ok(_) => tracing::info!(size, keys, pieces = pieces + 1, "split a region by size"),
                Err(error) => tracing::info!(%error, "a split by size was not done"),
            }
        }
    }
}
