//! When a client operation ran, as the client saw it.
//!
//! Every checker that reasons about real time needs the same two facts per operation:
//! when the client sent it and, if it learned the outcome, when that was. An operation
//! whose outcome the client never learned (it crashed, the call timed out, the
//! connection broke) is *indeterminate*: it may have taken effect at any moment after
//! it was invoked, or never. Times are abstract ticks (simulated time or wall-clock
//! nanoseconds); only their order matters.

/// The real-time interval of one operation, so checkers can tell which operations
/// overlapped and which one finished before another began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timing {
    /// When the client issued the operation.
    pub invoke: u64,
    /// When the client learned the outcome; `None` if it never did (indeterminate).
    pub complete: Option<u64>,
}

impl Timing {
    /// An operation whose outcome the client received, so it took effect (if at all)
    /// within `[invoke, complete]`.
    pub fn completed(invoke: u64, complete: u64) -> Timing {
        Timing { invoke, complete: Some(complete) }
    }

    /// An operation whose outcome is unknown, so it may take effect at any time after
    /// `invoke`, or never.
    pub fn indeterminate(invoke: u64) -> Timing {
        Timing { invoke, complete: None }
    }

    /// Whether the outcome is unknown; checkers must then accept both "it happened"
    /// and "it did not".
    pub fn is_indeterminate(&self) -> bool {
        self.complete.is_none()
    }

    /// Whether `self` finished strictly before `later` began, which is the only case in
    /// which real time forces `self` to take effect first. Equal ticks count as
    /// overlapping, so coarse clocks never produce false alarms.
    pub fn precedes(&self, later: &Timing) -> bool {
        matches!(self.complete, Some(c) if c < later.invoke)
    }
}

/// Renders bytes for a report: as a quoted string when they are printable ASCII (the
/// common case for test workloads), in hex otherwise.
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        let mut out = String::from("0x");
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedes_is_strict_and_needs_a_completion() {
        let a = Timing::completed(0, 10);
        assert!(a.precedes(&Timing::completed(11, 12)));
        assert!(!a.precedes(&Timing::completed(10, 12)), "touching intervals overlap");
        assert!(!a.precedes(&Timing::completed(5, 12)));
        let lost = Timing::indeterminate(0);
        assert!(lost.is_indeterminate());
        assert!(!lost.precedes(&Timing::completed(1_000, 1_001)));
        assert!(Timing::completed(0, 1).precedes(&Timing::indeterminate(5)));
    }

    #[test]
    fn bytes_render_readably() {
        assert_eq!(show_bytes(b"k1"), "\"k1\"");
        assert_eq!(show_bytes(&[0, 255]), "0x00ff");
    }
}
