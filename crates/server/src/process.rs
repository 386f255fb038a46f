//! This process's CPU time and resident memory, read from `/proc` (Linux only), so that
//! benchmarks can report the server's cost per operation.

/// CPU time and memory of the current process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads the statistics of process `pid` (`None` = this process); `None` where `/proc` is
/// unavailable.
pub fn read(pid: Option<u32>) -> Option<ProcessStats> {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |pid| format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // The kernel reports CPU time in clock ticks of USER_HZ, 100 on Linux.
    Some(ProcessStats { cpu_seconds: (utime + stime) / 100.0, rss_bytes: rss_kib * 1024 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        if let Some(stats) = super::read(None) {
            assert!(stats.rss_bytes > 0);
        }
    }
}
