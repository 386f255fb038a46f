//! Timestamps handed out by the timestamp oracle (TSO): unique, and increasing in real
//! time.
//!
//! Transactions take their start and commit timestamps from the TSO, and snapshot
//! isolation rests on two promises: no two requests ever get the same timestamp, and a
//! request that starts after another one finished gets a larger timestamp (otherwise a
//! transaction could start "before" a commit it has already heard about, and miss it).
//! Requests that overlap in real time may be answered in either order.
//!
//! Both checks are sort-and-sweep, O(n log n) in the number of observations: duplicates
//! by sorting on the timestamp; real-time order by sweeping invocations in time order
//! while keeping the largest timestamp among the requests that had completed before the
//! current invocation. A request is in violation exactly when that largest earlier
//! timestamp is not below its own, so every violating request is reported once, with
//! the earlier request holding the largest timestamp as the witness (reporting every
//! violating pair could be quadratic).

use std::collections::BTreeMap;
use std::fmt;

/// One timestamp a client received, and when it asked and heard back. A request that
/// got no answer gave no timestamp, so it is not an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TsObservation {
    /// When the client sent the request.
    pub invoke: u64,
    /// When the timestamp arrived.
    pub complete: u64,
    /// The timestamp.
    pub ts: u64,
}

/// A timestamp that was handed out more than once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The timestamp.
    pub ts: u64,
    /// Every observation (index into the checked slice) that got it, in index order.
    pub observations: Vec<usize>,
}

/// A request that got a timestamp no larger than one handed out, and received, before
/// the request was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderViolation {
    /// The observation that completed before `later` was invoked, with the largest
    /// timestamp among all such.
    pub earlier: usize,
    /// The observation whose timestamp is not above `earlier`'s.
    pub later: usize,
}

/// Everything wrong with a set of timestamp observations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TsReport {
    /// Timestamps handed out twice or more, by timestamp.
    pub duplicates: Vec<Duplicate>,
    /// Requests answered out of real-time order, by `later`'s invocation.
    pub order_violations: Vec<OrderViolation>,
}

impl TsReport {
    /// Whether the TSO kept both promises.
    pub fn is_valid(&self) -> bool {
        self.duplicates.is_empty() && self.order_violations.is_empty()
    }
}

impl fmt::Display for TsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_valid() {
            return write!(f, "timestamps are unique and follow real time");
        }
        let mut lines = Vec::new();
        for duplicate in &self.duplicates {
            lines.push(format!(
                "timestamp {} was handed out to observations {:?}",
                duplicate.ts, duplicate.observations
            ));
        }
        for violation in &self.order_violations {
            lines.push(format!(
                "observation #{} was sent after #{} completed, yet its timestamp is not larger",
                violation.later, violation.earlier
            ));
        }
        write!(f, "{}", lines.join("\n"))
    }
}

/// Checks that every timestamp in `observations` is unique and that timestamps grow in
/// real time (a completion strictly before an invocation orders the two; equal ticks
/// count as overlapping).
pub fn check(observations: &[TsObservation]) -> TsReport {
    let mut by_ts: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, observation) in observations.iter().enumerate() {
        by_ts.entry(observation.ts).or_default().push(i);
    }
    let duplicates = by_ts
        .into_iter()
        .filter(|(_, observations)| observations.len() > 1)
        .map(|(ts, observations)| Duplicate { ts, observations })
        .collect();

    let mut by_complete: Vec<usize> = (0..observations.len()).collect();
    by_complete.sort_by_key(|&i| (observations[i].complete, i));
    let mut by_invoke: Vec<usize> = (0..observations.len()).collect();
    by_invoke.sort_by_key(|&i| (observations[i].invoke, i));
    let mut order_violations = Vec::new();
    // The completed observation with the largest timestamp so far.
    let mut witness: Option<usize> = None;
    let mut completed = by_complete.iter().peekable();
    for &later in &by_invoke {
        let invoke = observations[later].invoke;
        while let Some(&&earlier) = completed.peek() {
            if observations[earlier].complete >= invoke {
                break;
            }
            if witness.is_none_or(|w| observations[earlier].ts > observations[w].ts) {
                witness = Some(earlier);
            }
            completed.next();
        }
        if let Some(earlier) = witness {
            if observations[earlier].ts >= observations[later].ts {
                order_violations.push(OrderViolation { earlier, later });
            }
        }
    }
    TsReport { duplicates, order_violations }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(invoke: u64, complete: u64, ts: u64) -> TsObservation {
        TsObservation { invoke, complete, ts }
    }

    #[test]
    fn increasing_and_overlapping_timestamps_pass() {
        let observations = [
            obs(0, 10, 100),
            // Overlaps the first: may get a smaller timestamp.
            obs(5, 15, 90),
            obs(20, 30, 110),
            // Sent exactly when the third completed: still overlapping.
            obs(30, 40, 105),
            obs(41, 42, 111),
        ];
        let report = check(&observations);
        assert!(report.is_valid(), "{report}");
        assert!(check(&[]).is_valid());
    }

    #[test]
    fn duplicates_are_grouped() {
        // All overlapping, so only the duplicates are wrong.
        let observations = [obs(0, 10, 7), obs(0, 10, 8), obs(5, 12, 7), obs(1, 11, 7)];
        let report = check(&observations);
        assert_eq!(report.duplicates, vec![Duplicate { ts: 7, observations: vec![0, 2, 3] }]);
        assert!(report.order_violations.is_empty());
    }

    #[test]
    fn going_back_in_real_time_is_a_violation() {
        let observations = [
            obs(0, 10, 100),
            obs(0, 12, 200),
            // After both: must exceed 200.
            obs(20, 30, 150),
            // After everything: must exceed 200 too; 201 is fine.
            obs(40, 50, 201),
            // Equal to an earlier, completed one: both a duplicate and out of order.
            obs(60, 70, 201),
        ];
        let report = check(&observations);
        assert_eq!(
            report.order_violations,
            vec![OrderViolation { earlier: 1, later: 2 }, OrderViolation { earlier: 3, later: 4 }]
        );
        assert_eq!(report.duplicates, vec![Duplicate { ts: 201, observations: vec![3, 4] }]);
        assert!(report.to_string().contains("observation #2 was sent after #1 completed"));
    }

    #[test]
    fn scales_to_many_observations() {
        // A hundred thousand sequential requests: quadratic would not finish in time.
        let observations: Vec<TsObservation> =
            (0..100_000u64).map(|i| obs(2 * i, 2 * i + 1, i + 1)).collect();
        assert!(check(&observations).is_valid());
        let mut broken = observations;
        broken[50_000].ts = 3;
        let report = check(&broken);
        // Later requests are above every earlier timestamp again: only the one is late.
        assert_eq!(
            report.order_violations,
            vec![OrderViolation { earlier: 49_999, later: 50_000 }]
        );
        assert_eq!(report.duplicates.len(), 1);
    }
}
