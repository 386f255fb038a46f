//! History checkers: each takes what clients did and saw, and reports every anomaly.
//!
//! The checkers share one notion of time ([`history::Timing`]) and are otherwise
//! independent: a workload records the history its checker needs and nothing else.

pub mod bank;
pub mod elle;
pub mod history;
pub mod linearizable;
pub mod timestamps;
