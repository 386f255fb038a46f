//! The disk-space guard: client writes that add data are refused while the data
//! directory's file system has less free space than the configured reserve.
//!
//! A node whose disk fills up completely cannot persist Raft's own records (hard state,
//! conf changes, the entries that would delete data) and must stop, as it does on any
//! failed write; TiKV met that as clusters that could not restart (tikv#5420) and answered
//! with a reserve and a `DiskFull` error. Here the reserve is a threshold, not a
//! placeholder file: below it, puts, compare-and-swaps, prewrites and pessimistic locks are
//! refused with one clear error, while reads, deletes, commits, rollbacks and lock
//! resolution go on, so transactions already prewritten can finish and space can be
//! freed. The free space is measured once a second.

use crate::error::RequestError;
use scandium_protocol::errorpb;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the free space is measured.
const INTERVAL: Duration = Duration::from_secs(1);

/// The free space of the data directory's file system, as last measured.
pub struct DiskSpace {
    path: PathBuf,
    reserve: u64,
    /// Bytes available to the node; `u64::MAX` when it cannot be measured.
    free: AtomicU64,
}

impl DiskSpace {
    /// Measures the file system holding `path` now; writes are refused below `reserve`
    /// bytes (0 never refuses).
    pub fn new(path: &Path, reserve: u64) -> DiskSpace {
        let free = available_bytes(path).unwrap_or(u64::MAX);
        let space = DiskSpace { path: path.to_path_buf(), reserve, free: AtomicU64::new(free) };
        if space.is_full() {
            space.warn_full();
        }
        space
    }

    fn warn_full(&self) {
        tracing::warn!(
            free_mib = self.free() >> 20,
            reserve_mib = self.reserve >> 20,
            path = %self.path.display(),
            "disk almost full: refusing writes that add data until space is freed (reads, deletes and commits go on)"
        );
    }

    /// Measures again.
    pub fn refresh(&self) {
        let free = match available_bytes(&self.path) {
            Ok(free) => free,
            Err(e) => {
                // Not knowing is no reason to refuse writes; a real full disk still stops
                // the node at its first failed write.
                if self.free.load(Ordering::Relaxed) != u64::MAX {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot measure free disk space; the disk-full guard is off until it can");
                }
                u64::MAX
            }
        };
        let was_full = self.is_full();
        self.free.store(free, Ordering::Relaxed);
        match (was_full, self.is_full()) {
            (false, true) => self.warn_full(),
            (true, false) => {
                tracing::warn!(free_mib = free >> 20, "disk space freed: accepting writes again")
            }
            _ => {}
        }
    }

    /// Bytes free, as last measured (`u64::MAX` if unknown).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether writes that add data are refused now.
    pub fn is_full(&self) -> bool {
        self.free() < self.reserve
    }

    /// Refuses a write that adds data while the disk is below its reserve. The error is a
    /// `disk_full` Region error that also carries `server_is_busy`: tikv-client 0.4 hands
    /// that to the caller at once instead of retrying (it does not know `disk_full`).
    pub fn check_write(&self, store_id: u64) -> Result<(), RequestError> {
        if !self.is_full() {
            return Ok(());
        }
        let reason = format!(
            "disk full on store {store_id}: {} MiB free in {}, below the reserve of {} MiB; \
             writes are refused until space is freed (reads, deletes and commits go on)",
            self.free() >> 20,
            self.path.display(),
            self.reserve >> 20,
        );
        Err(RequestError::Region(Box::new(errorpb::Error {
            message: reason.clone(),
            server_is_busy: Some(errorpb::ServerIsBusy {
                reason: reason.clone(),
                ..Default::default()
            }),
            disk_full: Some(errorpb::DiskFull { store_id: vec![store_id], reason }),
            ..Default::default()
        })))
    }
}

fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Measures the free space every second until the node stops.
pub async fn run(space: std::sync::Arc<DiskSpace>) {
    let mut interval = tokio::time::interval(INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let space = space.clone();
        // statvfs may block on a slow file system; keep it off the request threads.
        let _ = tokio::task::spawn_blocking(move || space.refresh()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_refuses_writes_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), u64::MAX);
        assert!(space.is_full());
        let Err(RequestError::Region(error)) = space.check_write(7) else {
            panic!("a full disk refuses writes");
        };
        assert!(error.message.contains("disk full on store 7"), "{}", error.message);
        assert!(error.server_is_busy.is_some() && error.disk_full.is_some());
        assert_eq!(error.disk_full.unwrap().store_id, vec![7]);
    }

    #[test]
    fn free_space_is_measured_and_a_small_reserve_allows_writes() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 1);
        assert!(space.free() > 1, "the test machine's disk has space");
        assert!(space.check_write(1).is_ok());
        let off = DiskSpace::new(dir.path(), 0);
        assert!(off.check_write(1).is_ok());
    }
}
