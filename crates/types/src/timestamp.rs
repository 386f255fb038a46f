//! Timestamps from the timestamp oracle (TSO).
//!
//! A timestamp packs wall-clock milliseconds (the physical part) above an 18-bit counter
//! (the logical part), exactly as TiKV and its clients do: lock TTLs in milliseconds are
//! compared against differences of physical parts.

use std::fmt;

/// Bits of the logical part.
pub const LOGICAL_BITS: u32 = 18;
/// Exclusive upper bound of the logical part.
pub const MAX_LOGICAL: u64 = 1 << LOGICAL_BITS;

/// A hybrid timestamp: `physical_ms << 18 | logical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeStamp(pub u64);

impl TimeStamp {
    /// The zero timestamp, which no transaction ever uses.
    pub const ZERO: TimeStamp = TimeStamp(0);
    /// The largest timestamp; clients use it to mean "now or later".
    pub const MAX: TimeStamp = TimeStamp(u64::MAX);

    /// Composes a timestamp; `logical` must be below [`MAX_LOGICAL`].
    pub fn compose(physical_ms: u64, logical: u64) -> TimeStamp {
        debug_assert!(logical < MAX_LOGICAL);
        TimeStamp(physical_ms << LOGICAL_BITS | logical)
    }

    /// Wall-clock milliseconds.
    pub fn physical(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The counter within one millisecond.
    pub fn logical(self) -> u64 {
        self.0 & (MAX_LOGICAL - 1)
    }

    /// The next timestamp; saturates at [`TimeStamp::MAX`].
    pub fn next(self) -> TimeStamp {
        TimeStamp(self.0.saturating_add(1))
    }
}

impl fmt::Display for TimeStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for TimeStamp {
    fn from(ts: u64) -> Self {
        TimeStamp(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_and_split() {
        let ts = TimeStamp::compose(1_700_000_000_000, 42);
        assert_eq!(ts.physical(), 1_700_000_000_000);
        assert_eq!(ts.logical(), 42);
        assert!(TimeStamp::compose(5, MAX_LOGICAL - 1) < TimeStamp::compose(6, 0));
    }
}
