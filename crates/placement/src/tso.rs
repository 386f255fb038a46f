//! [`TsoAllocator`]: the timestamp oracle.
//!
//! Timestamps are `physical_ms << 18 | logical`. The allocator never goes backwards, even
//! when the wall clock does, and never hands out a physical part at or beyond the
//! high-water mark (`limit_ms`) that the placement group has persisted. After a restart or
//! a leader change the allocator starts *at* the persisted mark, so every timestamp it
//! issues is above every timestamp issued before.
//!
//! The caller asks for a raise of the mark ahead of time ([`TsoAllocator::wanted_limit`]),
//! so in steady state no request waits for the placement group.

use scandium_types::timestamp::MAX_LOGICAL;
use scandium_types::TimeStamp;
use thiserror::Error;

/// How far ahead of the clock the high-water mark is pushed, in milliseconds.
pub const LIMIT_WINDOW_MS: u64 = 3_000;
/// When the clock is this close to the mark, a raise is wanted, in milliseconds.
const RAISE_MARGIN_MS: u64 = 1_000;
/// Most timestamps one request may ask for.
pub const MAX_BATCH: u32 = 1 << 16;

/// Why the allocator cannot issue now.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TsoError {
    /// The persisted high-water mark must first be raised to at least this value.
    #[error("timestamp high-water mark must be raised to {0} ms first")]
    LimitReached(u64),
    /// The request asked for zero or too many timestamps.
    #[error("timestamp count must be between 1 and {MAX_BATCH}, not {0}")]
    BadCount(u32),
}

/// Issues strictly increasing timestamps below a persisted high-water mark.
#[derive(Clone, Debug)]
pub struct TsoAllocator {
    physical_ms: u64,
    logical: u64,
    limit_ms: u64,
}

impl TsoAllocator {
    /// An allocator resuming after a persisted mark `limit_ms`: everything issued before
    /// had a smaller physical part.
    pub fn new(limit_ms: u64) -> TsoAllocator {
        TsoAllocator { physical_ms: limit_ms, logical: 0, limit_ms }
    }

    /// Records that the mark has been persisted at `limit_ms`.
    pub fn set_limit(&mut self, limit_ms: u64) {
        self.limit_ms = self.limit_ms.max(limit_ms);
    }

    /// The mark to persist next, if the clock is getting close to the current one.
    pub fn wanted_limit(&self, now_ms: u64) -> Option<u64> {
        let physical = now_ms.max(self.physical_ms);
        (physical + RAISE_MARGIN_MS >= self.limit_ms).then_some(physical + LIMIT_WINDOW_MS)
    }

    /// Issues `count` timestamps sharing one physical part and returns the largest; the
    /// caller hands out `largest - (count - 1) ..= largest`.
    pub fn allocate(&mut self, now_ms: u64, count: u32) -> Result<TimeStamp, TsoError> {
        if count == 0 || count > MAX_BATCH {
            return Err(TsoError::BadCount(count));
        }
        let count = u64::from(count);
        let (physical, logical) = if now_ms > self.physical_ms {
            (now_ms, count - 1)
        } else if self.logical + count < MAX_LOGICAL {
            (self.physical_ms, self.logical + count)
        } else {
            // The logical part is exhausted: borrow the next millisecond.
            (self.physical_ms + 1, count - 1)
        };
        if physical >= self.limit_ms {
            return Err(TsoError::LimitReached(physical + LIMIT_WINDOW_MS));
        }
        self.physical_ms = physical;
        self.logical = logical;
        Ok(TimeStamp::compose(physical, logical))
    }
}

/// The allocator of the placement leader's current term. A new term (this node newly
/// elected, or elected again after a partition) starts a new allocator at the persisted
/// mark, so it issues above anything any earlier leader (this node included) can have
/// handed out. Shared by the server and the simulator, so both run the same rules.
#[derive(Debug, Default)]
pub struct LeaderTso {
    current: Option<(u64, TsoAllocator)>,
}

/// What one allocation attempt produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The largest timestamp of the batch, or why none could be issued.
    pub result: Result<TimeStamp, TsoError>,
    /// A raise of the mark to propose in the background, if the clock nears it.
    pub wanted_limit: Option<u64>,
}

impl LeaderTso {
    /// Issues `count` timestamps as the leader of `term` at wall-clock time `now_ms`.
    /// `persisted_limit_ms` reads the persisted mark (in the placement state this node has
    /// applied); it is called only when `term` is new, so the steady state reads nothing
    /// shared. The caller has made sure it still leads (a lease or a ReadIndex round).
    pub fn allocate(
        &mut self,
        term: u64,
        persisted_limit_ms: impl FnOnce() -> u64,
        now_ms: u64,
        count: u32,
    ) -> Allocation {
        if self.current.as_ref().is_none_or(|(t, _)| *t != term) {
            self.current = Some((term, TsoAllocator::new(persisted_limit_ms())));
        }
        let (_, allocator) = self.current.as_mut().expect("just set");
        Allocation {
            result: allocator.allocate(now_ms, count),
            wanted_limit: allocator.wanted_limit(now_ms),
        }
    }

    /// The mark was persisted at `limit_ms` by a proposal made in `term`; a later term's
    /// allocator already starts from what it finds persisted.
    pub fn set_limit(&mut self, term: u64, limit_ms: u64) {
        if let Some((t, allocator)) = self.current.as_mut() {
            if *t == term {
                allocator.set_limit(limit_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_new_term_starts_at_the_persisted_mark() {
        let mut tso = LeaderTso::default();
        assert_eq!(tso.allocate(5, || 0, 1_000, 1).result, Err(TsoError::LimitReached(4_000)));
        tso.set_limit(5, 4_000);
        let first = tso.allocate(5, || 4_000, 1_000, 1).result.unwrap();
        tso.set_limit(4, 9_000);
        assert!(
            tso.allocate(5, || 4_000, 3_999, 1).result.is_ok(),
            "an older term's raise is ignored"
        );
        assert_eq!(
            tso.allocate(5, || 4_000, 4_000, 1).result,
            Err(TsoError::LimitReached(7_000)),
            "the mark of term 5 was not raised"
        );
        // Elected again in term 7, with the clock far behind: it starts at the mark term
        // 5 persisted, above everything term 5 handed out.
        tso.set_limit(7, 10_000);
        let later = tso.allocate(7, || 4_000, 100, 1);
        assert_eq!(later.result, Err(TsoError::LimitReached(7_000)));
        tso.set_limit(7, 7_000);
        let ts = tso.allocate(7, || 4_000, 100, 1).result.unwrap();
        assert!(ts > first && ts.physical() >= 4_000);
    }

    use super::*;

    #[test]
    fn first_issue_needs_a_persisted_limit() {
        let mut tso = TsoAllocator::new(0);
        assert_eq!(tso.allocate(1_000, 1), Err(TsoError::LimitReached(4_000)));
        tso.set_limit(4_000);
        let ts = tso.allocate(1_000, 1).unwrap();
        assert_eq!((ts.physical(), ts.logical()), (1_000, 0));
    }

    #[test]
    fn batches_share_one_physical_and_never_overlap() {
        let mut tso = TsoAllocator::new(0);
        tso.set_limit(10_000);
        let a = tso.allocate(1_000, 10).unwrap();
        let b = tso.allocate(1_000, 5).unwrap();
        assert_eq!(a.logical(), 9);
        assert_eq!(b.logical(), 14, "b's batch 10..=14 follows a's 0..=9");
        assert_eq!(a.physical(), b.physical());
    }

    #[test]
    fn clock_going_backwards_does_not_move_time_back() {
        let mut tso = TsoAllocator::new(0);
        tso.set_limit(100_000);
        let a = tso.allocate(50_000, 1).unwrap();
        let b = tso.allocate(10_000, 1).unwrap();
        assert!(b > a);
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let mut tso = TsoAllocator::new(0);
        tso.set_limit(10_000);
        let mut last = TimeStamp::ZERO;
        for _ in 0..10 {
            let ts = tso.allocate(1_000, MAX_BATCH).unwrap();
            assert!(ts > last);
            assert!(
                ts.logical() >= u64::from(MAX_BATCH) - 1,
                "the whole batch fits in one physical"
            );
            last = ts;
        }
        assert!(last.physical() > 1_000);
    }

    #[test]
    fn restart_resumes_above_the_persisted_limit() {
        let mut before = TsoAllocator::new(0);
        before.set_limit(5_000);
        let issued = before.allocate(4_999, 3).unwrap();
        // The node restarts with the wall clock far behind.
        let mut after = TsoAllocator::new(5_000);
        assert!(matches!(after.allocate(100, 1), Err(TsoError::LimitReached(_))));
        after.set_limit(8_000);
        assert!(after.allocate(100, 1).unwrap() > issued);
        assert_eq!(after.wanted_limit(100), None, "far from the mark");
        assert_eq!(after.wanted_limit(7_500), Some(10_500), "close to the mark");
    }

    #[test]
    fn bad_counts_are_refused() {
        let mut tso = TsoAllocator::new(10_000);
        assert_eq!(tso.allocate(1, 0), Err(TsoError::BadCount(0)));
        assert_eq!(tso.allocate(1, MAX_BATCH + 1), Err(TsoError::BadCount(MAX_BATCH + 1)));
    }
}
