//! A quiet node's memtables go to disk, so that its memory follows the data.
//!
//! fjall flushes a memtable when it reaches its size limit (16 MiB) or when the journal
//! grows past its bound (`FjallOptions::max_journal_bytes`); a node that stops taking
//! writes keeps what its memtables hold in memory for good: 10 MB per node of a 3-node
//! cluster once 10,000 Regions were made (`scripts/idle-regions.sh`), a tenth of what
//! such a node holds at rest. Every [`CHECK_EVERY`], this task looks at how much the
//! memtables hold: at least [`MIN_BYTES`], having grown by less than [`QUIET_GROWTH`]
//! over the last [`WINDOW`] looks, they are sealed for flushing (fjall's worker writes
//! them out as tables). A busy node's memtables keep filling and flush as before.

use scandium_storage::EngineRef;
use std::collections::VecDeque;
use std::time::Duration;

/// How often the memtables are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Memtables holding less stay: flushing them saves little.
pub const MIN_BYTES: u64 = 4 << 20;
/// Growth over a window below which the node counts as quiet (the placement group's
/// records of store liveness, which go on at rest, grow them by a few KiB a minute).
pub const QUIET_GROWTH: u64 = 256 << 10;
/// Looks a quiet spell takes: 30 s at [`CHECK_EVERY`].
pub const WINDOW: usize = 3;

/// The last looks at the memtables' size.
#[derive(Debug, Default)]
pub struct Quiet {
    samples: VecDeque<u64>,
}

impl Quiet {
    /// Records the memtables' size now (`bytes`); whether to flush them.
    pub fn observe(&mut self, bytes: u64) -> bool {
        self.samples.push_back(bytes);
        if self.samples.len() > WINDOW + 1 {
            self.samples.pop_front();
        }
        let oldest = self.samples.front().copied().unwrap_or(bytes);
        let quiet = self.samples.len() == WINDOW + 1
            && bytes >= MIN_BYTES
            && bytes.saturating_sub(oldest) < QUIET_GROWTH;
        if quiet {
            // A spell starts afresh once they are sealed.
            self.samples.clear();
        }
        quiet
    }
}

/// Looks at `engine`'s memtables every `every`, for ever, and flushes them when quiet.
pub async fn run(engine: EngineRef, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = Quiet::default();
    loop {
        ticker.tick().await;
        let bytes = engine.write_buffer_bytes();
        if !quiet.observe(bytes) {
            continue;
        }
        match engine.flush_memtables() {
            Ok(()) => tracing::info!(bytes, "the node is quiet: its memtables go to disk"),
            Err(error) => tracing::warn!(%error, "could not seal the memtables for flushing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtables_flush_after_a_quiet_spell_only() {
        let mut quiet = Quiet::default();
        // Growing fast: never.
        let busy: Vec<bool> = (1..=8).map(|i| quiet.observe(i * (4 << 20))).collect();
        assert!(busy.iter().all(|&flush| !flush), "{busy:?}");
        // Then still, for a window: once.
        let still = 40 << 20;
        let spell: Vec<bool> = (0..=WINDOW).map(|i| quiet.observe(still + i as u64)).collect();
        assert_eq!(spell.iter().filter(|&&flush| flush).count(), 1, "{spell:?}");
        assert!(spell[WINDOW], "at the end of the window");
        // A new spell is needed for the next.
        assert!(!quiet.observe(still));
        // Small memtables stay, however still.
        let mut small = Quiet::default();
        assert!((0..20).all(|_| !small.observe(MIN_BYTES - 1)));
    }

    #[test]
    fn slow_growth_counts_as_quiet() {
        let mut quiet = Quiet::default();
        let start = 10 << 20;
        let flushes: Vec<bool> =
            (0..=WINDOW as u64).map(|i| quiet.observe(start + i * (QUIET_GROWTH / 8))).collect();
        assert_eq!(flushes.last(), Some(&true), "{flushes:?}");
    }
}
