//! Wall-clock time. The server is the only crate that reads the clock; everything below
//! it takes time as an argument.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Milliseconds of a monotonic clock (since the process first asked). Leases and timeouts
/// are measured on it: it never jumps when the wall clock is set, and it keeps running
/// while the process is stopped (`SIGSTOP`), so a lease taken before a pause has run out
/// after it.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
